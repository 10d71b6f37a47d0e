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
        new_markdown_cell("## Check\n\nThe test suite runs this notebook; this cell states what it expects."),
        new_code_cell(
            'assert df["answer"].notna().all()\n'
            "assert list(details.columns) == [\n"
            '    "text", "cached", "error", "finish_reason", "input_tokens", "output_tokens",\n'
            '    "attempts", "latency_s", "model",\n'
            "]\n"
            'assert again["cached"].all() and cities["blurb"].notna().all()\n'
            'print("quickstart ok")'
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
            "## The sweep\n\nEvery row under every combination of the grid: one long frame with "
            "the original row label, the grid values and the details columns."
        ),
        new_code_cell(
            "runs = qa.minima.sweep(JUDGE, model=MODELS, temperature=[0.0, 0.7], max_tokens=64)\n"
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
        new_markdown_cell("## Check\n\nThe test suite runs this notebook; this cell states what it expects."),
        new_code_cell(
            "assert len(runs) == len(qa) * len(MODELS) * 2\n"
            'assert {"row", "model", "temperature", "max_tokens", "text", "error"} <= set(runs.columns)\n'
            'assert runs["error"].isna().all()\n'
            "assert wide.shape == (len(qa), len(MODELS) * 2)\n"
            'print("eval sweep ok")'
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
        new_markdown_cell("## Check\n\nThe test suite runs this notebook; this cell states what it expects."),
        new_code_cell(
            "assert len(cache) >= len(df)\n"
            'assert {"key", "model", "messages", "text", "created_at"} <= set(cache.columns)\n'
            "assert len(exported) == len(cache) == seeded.count()\n"
            'print("cache and parquet ok")'
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
            "## Judge every row\n\nOne row per input row, one column per output field "
            "(`reasoning` comes from ChainOfThought). The bar is the same as `generate`'s."
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
        new_markdown_cell("## Check\n\nThe test suite runs this notebook; this cell states what it expects."),
        new_code_cell(
            'assert list(judged.columns) == ["reasoning", "verdict", "score"]\n'
            'assert judged.index.equals(qa.index) and str(judged["score"].dtype) == "Float64"\n'
            'assert set(judged["verdict"].dropna()) <= {"correct", "incorrect"}\n'
            'assert details["cached"].all() and details["error"].isna().all()\n'
            'assert len(quick) == len(qa)\n'
            'print("dspy judge ok")'
        ),
    ]


NOTEBOOKS = {
    "01_quickstart.ipynb": quickstart,
    "02_eval_sweep.ipynb": eval_sweep,
    "03_cache_and_parquet.ipynb": cache_and_parquet,
    "04_dspy_judge.ipynb": dspy_judge,
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
