"""Writes the example notebooks in this folder (unexecuted) from the cell texts below.

Edit the cells here, then run ``.venv/bin/python notebooks/_build.py`` and commit the
``.ipynb`` files it writes. The tests (tests/test_notebooks.py) execute them against the
embedded mock server; with ``OPENAI_BASE_URL`` and ``OPENAI_MODEL`` set they use a real endpoint.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SETUP = '''\
import os
import tempfile

import pandas as pd

import minima_nb

# A real endpoint when OPENAI_BASE_URL and OPENAI_MODEL are set; otherwise the embedded mock.
cache_dir = os.environ.get("MINIMA_NB_CACHE_DIR") or tempfile.mkdtemp(prefix="minima-nb-")
if os.environ.get("OPENAI_BASE_URL") and os.environ.get("OPENAI_MODEL"):
    server = None
    backend = minima_nb.configure(cache_dir=os.environ.get("CACHE_DIR") or cache_dir)
else:
    from minima_nb.testing import MockServer

    server = MockServer(latency_s=0.02).start()
    backend = minima_nb.configure(
        base_url=server.base_url, model="mock-model", cache_dir=cache_dir, rpm=0
    )
backend'''

SETUP_NOTE = (
    "**Setup.** With `OPENAI_BASE_URL` and `OPENAI_MODEL` (and `OPENAI_API_KEY`) set, this "
    "notebook talks to that endpoint. Without them it starts minima_nb's embedded mock server "
    "(deterministic answers, no key needed), so every cell runs anywhere."
)


def quickstart() -> list:
    return [
        new_markdown_cell(
            "# minima_nb quickstart\n\nRun a column of prompts through an LLM with one line, "
            "cached, paced and retried.\n\n" + SETUP_NOTE
        ),
        new_code_cell(SETUP),
        new_markdown_cell(
            "## A column of prompts\n\n`df.minima.generate(\"prompt\")` sends every row as one "
            "batch and returns a Series aligned to the frame's index. The bar shows progress "
            "while it runs."
        ),
        new_code_cell(
            'questions = ["What is 2+2?", "Capital of France?"] + [\n'
            '    f"Give one fun fact about the number {n}." for n in range(48)\n'
            "]\n"
            'df = pd.DataFrame({"prompt": questions})\n'
            'df["answer"] = df.minima.generate("prompt")\n'
            "df.head()"
        ),
        new_markdown_cell(
            "## Details\n\n`details=True` returns one row per prompt with the text, whether it "
            "came from the cache, the error if the row failed, tokens, attempts and latency."
        ),
        new_code_cell(
            'details = df.minima.generate("prompt", details=True)\n'
            "details.head()"
        ),
        new_markdown_cell(
            "## The cache\n\nEvery answer is stored in a SQLite file, so running the same "
            "call again sends nothing: each row is served from the cache."
        ),
        new_code_cell(
            'again = df.minima.generate("prompt", details=True)\n'
            'again["cached"].all()'
        ),
        new_markdown_cell(
            "## Templates\n\nA prompt that is not a column is a template filled from each row "
            "with `str.format`. `system=` adds a system message; `model=` overrides the model "
            "for one call."
        ),
        new_code_cell(
            "cities = pd.DataFrame(\n"
            '    {"city": ["Paris", "Tokyo", "Lima"], "topic": ["food", "trains", "history"]}\n'
            ")\n"
            'cities["blurb"] = cities.minima.generate(\n'
            '    "Write one sentence about {topic} in {city}.", system="Be brief."\n'
            ")\n"
            "cities"
        ),
        new_markdown_cell(
            "## From async code\n\n`await df.minima.agenerate(...)` gives the same result on "
            "the notebook's own event loop. (Prefer the sync call in cells: it can be "
            "interrupted with the stop button.)"
        ),
        new_code_cell('short = await df.head(5).minima.agenerate("prompt", progress=False)\nshort'),
        new_markdown_cell(
            "## Typed answers\n\n`schema=` (a pydantic model class or a JSON-schema dict) asks "
            "the server for JSON of that shape (`response_format`), validates each answer, asks "
            "again when one does not validate, and returns one typed column per field. Answers "
            "that never validate are `<NA>`, with the reason in `error` under `details=True`; "
            "only validated answers are cached."
        ),
        new_code_cell(
            "verdict = {\n"
            '    "type": "object",\n'
            '    "properties": {\n'
            '        "answer": {"type": "string"},\n'
            '        "confident": {"type": "boolean"},\n'
            '        "score": {"type": "integer", "minimum": 0, "maximum": 10},\n'
            "    },\n"
            '    "required": ["answer", "confident", "score"],\n'
            "}\n"
            'typed = df.head(10).minima.generate("prompt", schema=verdict)\n'
            "print(typed.dtypes.to_dict())\n"
            "typed.head()"
        ),
        new_markdown_cell(
            "## What will it cost?\n\n`estimate` reads the cache and counts tokens without "
            "sending anything: rows, distinct prompts, already cached, to send, tokens and the "
            "cost range at your prices (per million tokens). `generate(max_cost=..., price=...)` "
            "then stops before the spend would pass the cap."
        ),
        new_code_cell(
            'more = pd.DataFrame({"prompt": questions + [f"Name a city starting with {c}." for c in "ABCDEFGHIJ"]})\n'
            'print(more.minima.estimate("prompt", price={"input": 0.15, "output": 0.60}))'
        ),
    ]


def eval_sweep() -> list:
    return [
        new_markdown_cell(
            "# An LLM-as-judge sweep\n\nGrade a few candidate answers with two judge models at "
            "two temperatures, all in one batch, then compare the judges.\n\n" + SETUP_NOTE
            + " Set `MINIMA_NB_JUDGE_MODELS=model-a,model-b` to choose the judges on a real "
            "endpoint. The mock server echoes prompts instead of judging, so its verdicts are "
            "not meaningful; the shape of the results is."
        ),
        new_code_cell(SETUP),
        new_code_cell(
            "qa = pd.DataFrame({\n"
            '    "question": [\n'
            '        "What is 2+2?", "Capital of France?", "Largest planet in the solar system?",\n'
            '        "Author of Pride and Prejudice?", "Chemical symbol for gold?",\n'
            '        "Boiling point of water at sea level, in Celsius?",\n'
            "    ],\n"
            '    "answer": ["4", "Lyon", "Jupiter", "Charlotte Bronte", "Au", "100"],\n'
            "})\n"
            "JUDGE = (\n"
            '    "Reply CORRECT or INCORRECT, then one short reason.\\n"\n'
            '    "Question: {question}\\nProposed answer: {answer}"\n'
            ")\n"
            "if server is not None:\n"
            '    MODELS = ["mock-model", "mock-model-large"]\n'
            "else:\n"
            '    names = os.environ.get("MINIMA_NB_JUDGE_MODELS", backend.config.model)\n'
            '    MODELS = [m.strip() for m in names.split(",") if m.strip()]\n'
            "MODELS"
        ),
        new_markdown_cell(
            "## What will the sweep cost?\n\n`estimate` takes the sweep's grid and sends nothing: "
            "every (row, combination) pair, those already cached, the tokens and the cost range "
            "at your prices (per million tokens)."
        ),
        new_code_cell(
            'PRICE = {"input": 0.15, "output": 0.60}\n'
            "est = qa.minima.estimate(JUDGE, model=MODELS, temperature=[0.0, 0.7], max_tokens=64,\n"
            "                         price=PRICE)\n"
            "print(est)"
        ),
        new_markdown_cell(
            "## The sweep\n\nEvery row under every combination of the grid: one long frame with "
            "the original row label, the grid values and the details columns. `max_cost` stops it "
            "before the spend would pass the cap (`BudgetExceeded`, with every answer kept); under "
            "the bar, the last answers name their judge setting."
        ),
        new_code_cell(
            "runs = qa.minima.sweep(JUDGE, model=MODELS, temperature=[0.0, 0.7], max_tokens=64,\n"
            "                       max_cost=0.50, price=PRICE)\n"
            'runs["verdict"] = runs["text"].str.extract(r"\\b(CORRECT|INCORRECT)\\b", expand=False)\n'
            'runs["correct"] = runs["verdict"].eq("CORRECT").astype("Float64")\n'
            "print(runs.shape)\n"
            "runs.head(8)"
        ),
        new_markdown_cell("## Side by side\n\nOne row per question, one column per judge setting."),
        new_code_cell(
            'wide = runs.pivot_table(\n'
            '    index="row", columns=["model", "temperature"], values="text", aggfunc="first"\n'
            ")\n"
            "wide"
        ),
        new_markdown_cell(
            "## Scores and agreement\n\nShare of answers judged correct per judge setting, and "
            "how often all settings agree on a question."
        ),
        new_code_cell(
            'scores = runs.pivot_table(index="model", columns="temperature", values="correct",\n'
            '                          aggfunc="mean")\n'
            'verdicts = runs.pivot_table(index="row", columns=["model", "temperature"],\n'
            '                            values="verdict", aggfunc="first")\n'
            'print("all judge settings agree on", f"{(verdicts.nunique(axis=1) <= 1).mean():.0%}",\n'
            '      "of the questions")\n'
            "scores"
        ),
        new_code_cell(
            "try:\n"
            "    import matplotlib  # noqa: F401  (optional: not a minima_nb dependency)\n"
            "except ImportError:\n"
            '    print("matplotlib is not installed; the table above is the plot.")\n'
            '    print(scores.to_string())\n'
            "else:\n"
            '    scores.plot.bar(title="Share judged correct", ylim=(0, 1))'
        ),
    ]


def cache_and_parquet() -> list:
    return [
        new_markdown_cell(
            "# The cache, and exporting it\n\nEvery answer lands in a plain SQLite file that any "
            "tool can read. This notebook looks inside it.\n\n" + SETUP_NOTE
        ),
        new_code_cell(SETUP),
        new_code_cell(
            'df = pd.DataFrame({"prompt": [f"Summarise item {i} in five words." for i in range(20)]})\n'
            'df["answer"] = df.minima.generate("prompt")\n'
            "df.head()"
        ),
        new_markdown_cell(
            "## The cache as a DataFrame\n\nThe table `responses` holds one row per distinct "
            "request: the model, the messages and parameters (JSON), the text, the raw response, "
            "token counts, finish reason, latency and when it was written."
        ),
        new_code_cell(
            "import json\n"
            "import sqlite3\n"
            "from contextlib import closing\n"
            "\n"
            "path = backend.cache.path\n"
            "with closing(sqlite3.connect(path)) as conn:\n"
            "    cache = pd.read_sql(\n"
            '        "SELECT key, model, messages, params, text, input_tokens, output_tokens, "\n'
            '        "finish_reason, latency_s, created_at FROM responses ORDER BY created_at",\n'
            "        conn,\n"
            "    )\n"
            'cache["prompt"] = cache["messages"].map(lambda m: json.loads(m)[-1]["content"])\n'
            'cache["created_at"] = pd.to_datetime(cache["created_at"], unit="s")\n'
            'print(path, len(cache), "rows")\n'
            'cache[["prompt", "text", "model", "output_tokens", "latency_s", "created_at"]].head()'
        ),
        new_code_cell(
            'cache.groupby("model")[["input_tokens", "output_tokens"]].sum()'
        ),
        new_markdown_cell(
            "## The cache as data: Parquet\n\n`open_cache` gives the same rows as a typed "
            "DataFrame, streams them to a versioned Parquet file (zstd, written to a temporary "
            "file and renamed into place), and imports such a file into another cache: share it "
            "with a colleague, archive it next to a paper, or seed another machine's cache."
        ),
        new_code_cell(
            "from minima_nb import open_cache\n\n"
            "view = open_cache(backend.cache.path)\n"
            "view.stats()"
        ),
        new_code_cell(
            'parquet_path = os.path.join(cache_dir, "answers.parquet")\n'
            "view.to_parquet(parquet_path, include_raw=False)"
        ),
        new_code_cell(
            "exported = pd.read_parquet(parquet_path)\n"
            "print(exported.dtypes)\n"
            'exported.groupby("model")[["input_tokens", "output_tokens"]].sum()'
        ),
        new_code_cell(
            "import tempfile\n\n"
            "# A colleague's machine: an empty cache seeded from the file.\n"
            "seeded = open_cache(tempfile.mkdtemp())\n"
            "print(seeded.from_parquet(parquet_path))\n"
            'seeded.to_pandas()[["model", "text", "created_at"]].head()'
        ),
    ]


def dspy_judge() -> list:
    return [
        new_markdown_cell(
            "# An LLM-as-judge DSPy program over a DataFrame\n\nA DSPy signature grades candidate "
            "answers; `df.minima.predict` runs it on every row as one cached batch and returns one "
            "typed column per output field. Needs `pip install 'minima-nb[dspy]'`.\n\n" + SETUP_NOTE
            + " The mock server answers DSPy's format with deterministic made-up verdicts, so the "
            "shape of the results is meaningful, the grades are not."
        ),
        new_code_cell(SETUP),
        new_code_cell(
            "from typing import Literal\n\n"
            "import dspy\n\n"
            "from minima_nb.dspy_adapter import MinimaLlmDSPyLM\n\n\n"
            "class Judge(dspy.Signature):\n"
            '    """Is the proposed answer to the question correct? Score it from 1 to 5."""\n\n'
            "    question: str = dspy.InputField()\n"
            "    answer: str = dspy.InputField(desc=\"the proposed answer\")\n"
            "    verdict: Literal[\"correct\", \"incorrect\"] = dspy.OutputField()\n"
            "    score: float = dspy.OutputField(desc=\"1 (wrong) to 5 (right)\")\n\n\n"
            "dspy.configure(lm=MinimaLlmDSPyLM(backend))\n"
            "qa = pd.DataFrame({\n"
            '    "question": ["What is 2+2?", "Capital of France?", "Largest planet in the solar system?",\n'
            '                 "Author of Pride and Prejudice?", "Chemical symbol for gold?"],\n'
            '    "answer": ["4", "Lyon", "Jupiter", "Charlotte Bronte", "Au"],\n'
            "})\n"
            "qa"
        ),
        new_markdown_cell(
            "## What will it cost?\n\n`estimate` takes the program: DSPy formats each row's "
            "prompt as it would send it, and nothing is sent."
        ),
        new_code_cell(
            'est = qa.minima.estimate(dspy.ChainOfThought(Judge), price={"input": 0.15, "output": 0.60})\n'
            "print(est)"
        ),
        new_markdown_cell(
            "## Judge every row\n\nOne row per input row, one column per output field "
            "(`reasoning` comes from ChainOfThought). The bar is the same as `generate`'s; under it, "
            "the last rows' input and output fields. `max_cost=` / `max_tokens_total=` cap the "
            "spend as in `generate`."
        ),
        new_code_cell(
            "judged = qa.minima.predict(dspy.ChainOfThought(Judge))\n"
            "graded = qa.join(judged)\n"
            "graded"
        ),
        new_markdown_cell(
            "## Again, from the cache\n\n`details=True` adds `cached`, `error`, `attempts` and the "
            "token counts. The second run sends no request."
        ),
        new_code_cell(
            "details = qa.minima.predict(dspy.ChainOfThought(Judge), details=True)\n"
            'details[["verdict", "score", "cached", "attempts", "error"]]'
        ),
        new_markdown_cell("## The awaitable form\n\n`await df.minima.apredict(...)` works from a cell too."),
        new_code_cell(
            'quick = await qa.minima.apredict(dspy.Predict(Judge), progress=False)\n'
            'print(quick["verdict"].value_counts().to_dict())\n'
            'print("mean score", round(float(quick["score"].mean()), 2))'
        ),
    ]


def batch_jobs() -> list:
    return [
        new_markdown_cell(
            "# Provider batch jobs\n\nOpenAI-compatible providers answer a file of requests within "
            "24 h at about half the price. `via=\"batch\"` sends a column that way and puts every "
            "answer in the prompt cache.\n\n**Setup.** This notebook always uses minima_nb's embedded "
            "mock server, whose batch clock runs 3,600 times fast (a 12-minute batch takes 0.2 s): a "
            "real provider takes minutes to hours and bills the batch."
        ),
        new_code_cell(
            "import os\n"
            "import tempfile\n\n"
            "import pandas as pd\n\n"
            "import minima_nb\n"
            "from minima_nb.testing import MockServer\n\n"
            'cache_dir = os.environ.get("MINIMA_NB_CACHE_DIR") or tempfile.mkdtemp(prefix="minima-nb-")\n'
            "server = MockServer(batch_time_scale=3600).start()\n"
            "backend = minima_nb.configure(base_url=server.base_url, model=\"mock-model\", cache_dir=cache_dir,\n"
            "                              rpm=0, parasail={\"poll_interval_s\": 0.2})\n"
            "backend"
        ),
        new_markdown_cell(
            "## A column as batches\n\nCached rows are answered at once; the rest go out as batch "
            "files (split by model, 50,000 lines and 190 MB) and the call waits. Interrupting the wait "
            "leaves the batches running; running the cell again reattaches to the same job."
        ),
        new_code_cell(
            'df = pd.DataFrame({"prompt": [f"Name a colour that rhymes with {w}." for w in\n'
            '                              ["red", "blue", "green", "grey", "gold", "pink"] * 5]})\n'
            'df["answer"] = df.minima.generate("prompt", via="batch", prefix="colours", progress="text")\n'
            "df.head()"
        ),
        new_markdown_cell(
            "## Submit now, collect later\n\n`submit` returns a `BatchJob` at once. Its state is in a "
            "SQLite file beside the cache, so after a restart `BatchJob.open(job_id)` (or "
            "`minima-nb batch wait JOB`) carries on. `result()` is what `generate()` would return."
        ),
        new_code_cell(
            'more = pd.DataFrame({"prompt": [f"Spell the number {n} in French." for n in range(20)]})\n'
            'job = more.minima.submit("prompt", prefix="numbers")\n'
            "job.status()[\"state\"], job.job_id"
        ),
        new_code_cell(
            'more["answer"] = job.wait(progress="text").result()\n'
            "more.head()"
        ),
        new_markdown_cell(
            "## Failed lines are row outcomes\n\nThe mock can fail lines: 400s fail for good with the "
            "provider's message, 500s are sent again in a second batch."
        ),
        new_code_cell(
            'server.batches.script_batches(["partial"])\n'
            'tricky = pd.DataFrame({"prompt": [f"Is {n} prime?" for n in range(14)]})\n'
            'details = tricky.minima.generate("prompt", via="batch", prefix="primes", details=True,\n'
            '                                 progress="text")\n'
            'details[["text", "error"]].tail(8)'
        ),
        new_markdown_cell("## The jobs of this cache\n\n`minima_nb.batch_jobs()`; `job.cancel()` and "
                          "`minima-nb batch cancel JOB` cancel one, keeping its partial output."),
        new_code_cell("minima_nb.batch_jobs()[[\"job_id\", \"prefix\", \"state\", \"done\", \"failed\"]]"),
        new_markdown_cell("## The live path, for comparison\n\nThe same call without `via` sends the "
                          "uncached rows at once (full price, answers in seconds)."),
        new_code_cell(
            'live = pd.DataFrame({"prompt": [f"Name a fruit that starts with {c}." for c in "abcdefgh"]})\n'
            'live["answer"] = live.minima.generate("prompt")\n'
            "live.head()"
        ),
        new_markdown_cell("## Afterwards, plain `generate()` sends nothing\n\nThe answers are in the cache."),
        new_code_cell(
            "server.reset_counts()\n"
            'again = df.minima.generate("prompt")\n'
            "print(server.requests_total, \"requests sent\")\n"
            "again.head()"
        ),
    ]


def dask_scale_out() -> list:
    return [
        new_markdown_cell(
            "# Scale-out on Dask\n\nThe same one line over a Dask cluster: here a `LocalCluster` of "
            "two worker processes on this machine, against minima_nb's embedded mock server (no key "
            "needed). On one machine Dask adds no speed; it is for data that already lives in a "
            "cluster. Needs `pip install 'minima-nb[dask]'`."
        ),
        new_code_cell(
            "import tempfile\n\n"
            "import dask.dataframe as dd\n"
            "import pandas as pd\n"
            "from dask.distributed import Client, LocalCluster\n\n"
            "import minima_nb\n"
            "import minima_nb.dask  # registers ddf.minima and series.minima\n"
            "from minima_nb.testing import MockServer\n\n"
            "server = MockServer(latency_s=0.02).start()\n"
            "cache_dir = tempfile.mkdtemp(prefix='minima-dask-')\n"
            "minima_nb.configure(base_url=server.base_url, model='mock-model', cache_dir=cache_dir, rpm=3000)\n"
            "cluster = LocalCluster(n_workers=2, processes=True, threads_per_worker=1,\n"
            "                       host='127.0.0.1', dashboard_address=':0')\n"
            "client = Client(cluster)\n"
            "client"
        ),
        new_markdown_cell(
            "## Lazy until you compute\n\n`ddf.minima.generate` returns a Dask Series at once; "
            "nothing is sent until the computation runs."
        ),
        new_code_cell(
            "df = pd.DataFrame({'prompt': [f'Give one fun fact about the number {n}.' for n in range(300)]})\n"
            "ddf = dd.from_pandas(df, npartitions=6)\n"
            "answers = ddf.minima.generate('prompt')\n"
            "print(type(answers).__name__, answers.dtype, '- requests sent so far:', server.requests_total)"
        ),
        new_markdown_cell(
            "## One bar for the whole cluster\n\nA plain `.compute()` shows one bar of the rows every "
            "worker reports, live, in the cell that runs it (a heartbeat line outside a notebook). "
            "`rpm=3000` is the budget of the whole computation, shared by both workers through the "
            "scheduler."
        ),
        new_code_cell(
            "out = answers.compute()\n"
            "print(server.requests_total, 'requests sent')\n"
            "out.head()"
        ),
        new_markdown_cell(
            "## Details, and a re-run from the shared cache\n\nBoth workers wrote the notebook's "
            "cache while they ran, so the same rows again send nothing."
        ),
        new_code_cell(
            "wide = ddf.minima.generate('prompt', details=True).compute()\n"
            "print(wide['cached'].sum(), 'of', len(wide), 'rows from the cache;', server.requests_total, 'requests in all')\n"
            "wide.head(3)"
        ),
        new_markdown_cell(
            "## Dask's own progress beside it\n\nDask's task bar and dashboard keep working: they "
            "count tasks, minima's bar counts rows. `persist()` runs in the background; its rows "
            "show in the cell that started it (here Dask's bar holds the cell until its tasks are done)."
        ),
        new_code_cell(
            "from dask.distributed import progress\n\n"
            "held = ddf.minima.generate('In one word: {prompt}').persist()\n"
            "progress(held, notebook=False)  # Dask's task bar, as text; it waits for the tasks\n"
            "print('dashboard:', client.dashboard_link)"
        ),
        new_markdown_cell("## Done\n\nClose the cluster when you are finished with it."),
        new_code_cell("client.close()\ncluster.close()\nserver.stop()"),
    ]


NOTEBOOKS = {
    "01_quickstart.ipynb": quickstart,
    "02_eval_sweep.ipynb": eval_sweep,
    "03_cache_and_parquet.ipynb": cache_and_parquet,
    "04_dspy_judge.ipynb": dspy_judge,
    "05_batch_jobs.ipynb": batch_jobs,
    "06_dask.ipynb": dask_scale_out,
}


def build(name: str) -> nbformat.NotebookNode:
    """The notebook ``name``, unexecuted."""
    nb = new_notebook(cells=NOTEBOOKS[name]())
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for index, cell in enumerate(nb.cells):
        cell.id = f"{Path(name).stem[:2]}-{index:02d}"  # stable ids: rebuilding gives no diff
    return nb


def main() -> None:
    for name in NOTEBOOKS:
        nb = build(name)
        nbformat.validate(nb)
        nbformat.write(nb, HERE / name)
        print("wrote", HERE / name)


if __name__ == "__main__":
    main()
