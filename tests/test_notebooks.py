"""The example notebooks, and the accessor inside a real Jupyter kernel (nbclient, ipykernel).

Each test starts a kernel of THIS virtualenv (a kernelspec written into a temporary
JUPYTER_PATH, and checked from inside the kernel) with the OPENAI_* variables removed, so the
notebooks start the embedded mock server and cache into a temporary directory.
"""

from __future__ import annotations

import importlib.util
import queue
import sqlite3
import sys
import threading
import time
from pathlib import Path

import ipykernel.kernelspec
import nbformat
import pytest
from jupyter_client import KernelManager
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

from minima_nb.cache import CACHE_FILENAME
from minima_nb.config import ENV_VARS
from minima_nb.testing import MockServer

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = ["01_quickstart.ipynb", "02_eval_sweep.ipynb", "03_cache_and_parquet.ipynb",
             "04_dspy_judge.ipynb", "05_batch_jobs.ipynb", "06_dask.ipynb"]
WHERE_AM_I = "import sys\nprint(sys.executable, sys.prefix)"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
CELL_TIMEOUT_S = 60
# What each notebook is expected to leave behind, checked in its kernel after its last cell (the
# notebooks a user reads end with their last useful cell, not with the suite's assertions).
# The cluster-wide bar of minima_nb.dask counts rows from the workers' events and shows no
# preview of answers (the answers stay on the workers until the compute returns).
NO_PREVIEW = {"06_dask.ipynb"}
# What the preview's lines start with where it is not generate's "✓ <prompt> → <answer>".
PREVIEW_LINES = {"02_eval_sweep.ipynb": "✓ [model=mock-model", "04_dspy_judge.ipynb": "✓ question: "}
CHECKS = {
    "05_batch_jobs.ipynb": (
        'assert again.equals(df["answer"]) and server.requests_total == 0\n'
        'assert more["answer"].notna().all() and details["error"].notna().sum() == 2\n'
        'assert set(minima_nb.batch_jobs()["state"]) == {"completed"}\n'
        "server.stop()\n"
        'print("batch jobs ok")'
    ),
    "01_quickstart.ipynb": (
        'assert df["answer"].notna().all()\n'
        "assert list(details.columns) == [\n"
        '    "text", "cached", "error", "finish_reason", "input_tokens", "output_tokens",\n'
        '    "attempts", "latency_s", "model",\n'
        "]\n"
        'assert again["cached"].all() and cities["blurb"].notna().all()\n'
        'assert typed.dtypes.astype(str).to_dict() == {"answer": "string", "confident": "boolean",\n'
        '                                              "score": "Int64"}\n'
        "assert typed.notna().all().all()\n"
        'est = more.minima.estimate("prompt")\n'
        "assert (est.rows, est.cached, est.to_send) == (60, 50, 10)\n"
        'print("quickstart ok")'
    ),
    "02_eval_sweep.ipynb": (
        "assert len(runs) == len(qa) * len(MODELS) * 2\n"
        "assert (est.rows, est.cached, est.to_send) == (len(runs), 0, len(runs))\n"
        'assert {"row", "model", "temperature", "max_tokens", "text", "error"} <= set(runs.columns)\n'
        'assert runs["error"].isna().all()\n'
        "assert wide.shape == (len(qa), len(MODELS) * 2)\n"
        'print("eval sweep ok")'
    ),
    "03_cache_and_parquet.ipynb": (
        "assert len(cache) >= len(df)\n"
        'assert {"key", "model", "messages", "text", "created_at"} <= set(cache.columns)\n'
        "assert len(exported) == len(cache) == seeded.count()\n"
        'print("cache and parquet ok")'
    ),
    "04_dspy_judge.ipynb": (
        'assert list(judged.columns) == ["reasoning", "verdict", "score"]\n'
        'assert judged.index.equals(qa.index) and str(judged["score"].dtype) == "Float64"\n'
        'assert set(judged["verdict"].dropna()) <= {"correct", "incorrect"}\n'
        'assert details["cached"].all() and details["error"].isna().all()\n'
        'assert len(quick) == len(qa) and (est.rows, est.cached, est.to_send) == (5, 0, 5)\n'
        'print("dspy judge ok")'
    ),
    # 06 closes its cluster and server in its last cell: what they gave is checked from the
    # variables, and the pandas accessor's answers (no cluster needed) must equal the cluster's.
    "06_dask.ipynb": (
        "last = minima_nb.dask.last_progress()\n"
        "assert (last.total, last.done, last.cached, last.failed) == (len(df), len(df), 0, 0)\n"
        "assert out.notna().all() and server.requests_total == 2 * len(df)\n"
        "assert out.equals(df.minima.generate('prompt', progress=False))\n"
        'assert wide["cached"].all()\n'
        'print("dask ok")'
    ),
}


# Cells whose OWN output must hold minima's widget in its final state (source fragment, rows on
# the bar, words of its final line): a plain `.compute()` on Dask counts the rows of every
# worker in the cell that runs it, not in the cell that made the Client.
CELL_WIDGETS = {
    "06_dask.ipynb": [
        ("out = answers.compute()", 300, ["cached 0", "failed 0", "300 requests"]),
        ("details=True).compute()", 300, ["cached 300", "failed 0", "0 requests"]),
    ],
}
# ...and cells that must show none of minima's widgets (the events' handler thread belongs to
# the cell that made the Client: a widget drawn without the running cell's context lands here).
NO_WIDGET_CELLS = {"06_dask.ipynb": ["client = Client(cluster)"]}


def _load_builder():
    spec = importlib.util.spec_from_file_location("notebooks_build", NOTEBOOK_DIR / "_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def jupyter_path(tmp_path_factory):
    """A JUPYTER_PATH whose "python3" kernel is this interpreter, whatever else is installed."""
    prefix = tmp_path_factory.mktemp("jupyter")
    ipykernel.kernelspec.install(kernel_name="python3", prefix=str(prefix))
    return prefix / "share" / "jupyter"


@pytest.fixture
def kernel_env(jupyter_path, tmp_path, monkeypatch):
    """Environment the kernel inherits: no endpoint configured, a temporary cache dir."""
    for var, _, _ in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("MINIMA_NB_CACHE_DIR", str(cache_dir))
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter_path))
    return cache_dir


def _text(outputs) -> str:
    return "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")


def _errors(nb) -> list[str]:
    return [f"{o.ename}: {o.evalue}" for cell in nb.cells for o in cell.get("outputs", [])
            if o.output_type == "error"]


def _widget_models(nb, *names: str) -> list[dict]:
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    return [m["state"] for m in state.values() if m.get("model_name") in names]


def _cell_widget_states(nb, cell) -> list[dict]:
    """Every widget model shown in ``cell``'s outputs, with the models inside them."""
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    todo = [o["data"]["application/vnd.jupyter.widget-view+json"]["model_id"]
            for o in cell.get("outputs", [])
            if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    found: list[dict] = []
    while todo:
        model = state.get(todo.pop())
        if model is None:
            continue
        found.append(model)
        children = model["state"].get("children", [])
        todo.extend(c.removeprefix("IPY_MODEL_") for c in children if isinstance(c, str))
    return found


def _assert_cell_widgets(nb, name: str) -> None:
    for fragment in NO_WIDGET_CELLS.get(name, []):
        cell = next(c for c in nb.cells if c.cell_type == "code" and fragment in c.source)
        assert _cell_widget_states(nb, cell) == [], fragment
    for fragment, rows, words in CELL_WIDGETS.get(name, []):
        cell = next(c for c in nb.cells if c.cell_type == "code" and fragment in c.source)
        models = _cell_widget_states(nb, cell)
        bars = [m["state"] for m in models
                if m["model_name"] in ("FloatProgressModel", "IntProgressModel")]
        assert [(b["value"], b["max"]) for b in bars] == [(rows, rows)], (fragment, bars)
        texts = [m["state"].get("value", "").replace("\u2007", " ") for m in models
                 if m["model_name"] == "HTMLModel"]
        final = next((t for t in texts if f"{rows}/{rows}" in t), "")
        assert all(word in final for word in words), (fragment, texts)


def _progress_bars(nb) -> list[dict]:
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    return [m["state"] for m in state.values()
            if m.get("model_name") in ("FloatProgressModel", "IntProgressModel")]


def _assert_own_interpreter(where_am_i_output: str) -> None:
    assert where_am_i_output.split() == [sys.executable, sys.prefix]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_clean_with_full_progress_bars(name, kernel_env, tmp_path):
    """The notebook runs without errors in this venv's kernel; every progress bar ends at 100 %."""
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    last = [c for c in nb.cells if c.cell_type == "code"][-1]
    assert "assert" not in last.source, "a notebook ends with its last useful cell"
    nb.cells.insert(0, new_code_cell(WHERE_AM_I))
    nb.cells.append(new_code_cell(CHECKS[name]))  # the suite's own expectations
    client = NotebookClient(nb, timeout=120, kernel_name="python3", store_widget_state=True,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    _assert_own_interpreter(_text(nb.cells[0].outputs))
    assert _errors(nb) == []
    assert _text(nb.cells[-1].outputs).strip().endswith("ok")  # the suite's checks, above
    _assert_cell_widgets(nb, name)
    bars = _progress_bars(nb)
    assert bars, "no progress widget was saved"
    assert [(b["value"], b["max"]) for b in bars] == [(b["max"], b["max"]) for b in bars]
    assert bars[-1]["max"] > 0 and bars[-1].get("bar_style") in (None, "", "success")
    # Under every bar, the preview of the last answers as they arrived (one line each).
    previews = [m["value"] for m in _widget_models(nb, "HTMLModel") if "<pre" in m.get("value", "")]
    if name not in NO_PREVIEW:
        assert previews and all("✓ " in value for value in previews)
        assert any(PREVIEW_LINES.get(name, "✓ ") in value for value in previews)
    # The final lines count requests actually sent and make up no rate: each is measured over
    # its whole call (rows/s), tok/s only where tokens came back.
    postfixes = [m["value"].replace("\u2007", " ") for m in _widget_models(nb, "HTMLModel")
                 if "requests" in m.get("value", "")]
    assert postfixes and not any("? tok/s" in p for p in postfixes)
    assert all("rows/s" in p for p in postfixes), postfixes


def test_quickstart_shows_typed_answers_the_estimate_and_a_cached_rerun(kernel_env, tmp_path):
    """What a reader of the quickstart sees: typed columns, an estimate, a cached re-run's line."""
    nb = nbformat.read(NOTEBOOK_DIR / "01_quickstart.ipynb", as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", store_widget_state=True,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    estimate_cell = next(c for c in nb.cells if "minima.estimate" in c.source)
    shown = _text(estimate_cell.outputs)
    assert "rows 60 | distinct prompts 60 | already cached 50 | to send 10" in shown
    assert "cost $" in shown
    typed_cell = next(c for c in nb.cells if "schema=verdict" in c.source)
    assert "'score': Int64Dtype()" in _text(typed_cell.outputs)
    postfixes = [m["value"].replace("\u2007", " ") for m in _widget_models(nb, "HTMLModel")
                 if "requests" in m.get("value", "")]
    # the cached re-run (third call): 50 rows from the cache, not one request, and its rows/s
    rerun = [p for p in postfixes if "cached 50, failed 0, 0 requests" in p]
    assert rerun and all(p.endswith(" rows/s]") and "tok/s" not in p for p in rerun)


def test_committed_notebooks_are_unexecuted_and_match_builder():
    """The .ipynb files are what notebooks/_build.py writes: no outputs, no execution counts."""
    builder = _load_builder()
    for name in NOTEBOOKS:
        committed = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
        assert committed == builder.build(name), f"run notebooks/_build.py to refresh {name}"
        for cell in committed.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None


class Kernel:
    """A kernel of this venv driven message by message, as a Jupyter front end does."""

    def __init__(self, cwd: Path) -> None:
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(cwd=str(cwd))
        self.kc = self.km.blocking_client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=CELL_TIMEOUT_S)

    def run_all(self, sources: list[str]) -> list[dict]:
        """Queue every cell at once ("Run All"); per cell: its iopub outputs and reply status."""
        ids = [self.kc.execute(source) for source in sources]
        cells = {i: {"outputs": [], "status": None, "idle": False} for i in ids}
        deadline = time.monotonic() + CELL_TIMEOUT_S * len(ids)
        while not all(c["idle"] for c in cells.values()) and time.monotonic() < deadline:
            try:
                msg = self.kc.get_iopub_msg(timeout=1)
            except queue.Empty:
                continue
            cell = cells.get(msg["parent_header"].get("msg_id"))
            if cell is None:
                continue
            if msg["msg_type"] == "status":
                cell["idle"] = cell["idle"] or msg["content"]["execution_state"] == "idle"
            elif msg["msg_type"] in ("stream", "display_data", "execute_result", "error"):
                cell["outputs"].append({"output_type": msg["msg_type"], **msg["content"]})
        pending = set(ids)
        while pending:
            reply = self.kc.get_shell_msg(timeout=CELL_TIMEOUT_S)
            msg_id = reply["parent_header"].get("msg_id")
            if msg_id in pending:  # a late kernel_info_reply from wait_for_ready's retries is not
                pending.discard(msg_id)
                cells[msg_id]["status"] = reply["content"]["status"]
        return [cells[i] for i in ids]

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


@pytest.fixture
def kernel(kernel_env, tmp_path):
    k = Kernel(tmp_path)
    yield k
    k.close()


def _has_widget(outputs: list[dict]) -> bool:
    return any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)


@pytest.mark.parametrize("patched", [False, True], ids=["plain", "nest_asyncio"])
def test_run_all_queued_generate_cells_each_produce_output(kernel, patched):
    """Six generate cells queued at once all run with their own output and bar (also under nest_asyncio)."""
    setup = _load_builder().SETUP
    if patched:
        setup = "import nest_asyncio\nnest_asyncio.apply()\n" + setup
    cells = [
        f"df{i} = pd.DataFrame({{'prompt': [f'cell {i} question {{j}}' for j in range(10)]}})\n"
        f"r{i} = df{i}.minima.generate('prompt')\n"
        f"print('cell {i}:', int(r{i}.notna().sum()))"
        for i in range(6)
    ]
    results = kernel.run_all([WHERE_AM_I, setup, *cells])
    _assert_own_interpreter(_text(results[0]["outputs"]))
    assert [r["status"] for r in results] == ["ok"] * len(results)
    for i, result in enumerate(results[2:]):
        assert f"cell {i}: 10" in _text(result["outputs"])
        assert _has_widget(result["outputs"]), f"cell {i} shows no progress bar"


def _interrupt_when_busy(km: KernelManager, server: MockServer, sent: int, timeout_s: float):
    """Interrupt the kernel once the server has seen ``sent`` requests (or after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while server.requests_total < sent and time.monotonic() < deadline:
        time.sleep(0.05)
    km.interrupt_kernel()


def test_interrupted_generate_keeps_kernel_and_finished_rows(kernel, kernel_env):
    """Interrupting a long generate cell stops it, keeps the kernel alive and caches what finished."""
    total = 2000
    with MockServer(latency_s=0.2) as server:
        setup = (
            "import minima_nb, pandas as pd\n"
            f"minima_nb.configure(base_url={server.base_url!r}, model='mock-model', "
            f"cache_dir={str(kernel_env)!r}, rpm=0, batch={{'num_workers': 4}})\n"
            f"df = pd.DataFrame({{'prompt': [f'long {{i}}' for i in range({total})]}})"
        )
        assert [r["status"] for r in kernel.run_all([WHERE_AM_I, setup])] == ["ok", "ok"]
        interrupter = threading.Thread(target=_interrupt_when_busy,
                                       args=(kernel.km, server, 20, 30.0), daemon=True)
        interrupter.start()
        [long_cell] = kernel.run_all(["out = df.minima.generate('prompt')"])
        interrupter.join(timeout=CELL_TIMEOUT_S)
        [after] = kernel.run_all(["print('alive', 'out' in globals())"])
        if after["status"] == "aborted":
            # ipykernel 6 aborts requests that arrive right after a cell's error (its
            # stop-on-error policy, not ours); ask once more, as a user would.
            [after] = kernel.run_all(["print('alive', 'out' in globals())"])
    assert long_cell["status"] == "error"
    assert [o["ename"] for o in long_cell["outputs"] if o["output_type"] == "error"] == [
        "KeyboardInterrupt"]
    assert after["status"] == "ok" and "alive False" in _text(after["outputs"])
    with sqlite3.connect(kernel_env / CACHE_FILENAME) as conn:
        rows = conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    assert 0 < rows < total


def test_dspy_sync_and_async_calls_in_a_kernel(kernel):
    """MinimaLlmDSPyLM in a real kernel: a sync call in a cell, top-level await, gather, .batch()."""
    setup = _load_builder().SETUP + (
        "\nimport asyncio, dspy\n"
        "from minima_nb.dspy_adapter import MinimaLlmDSPyLM\n"
        "class QA(dspy.Signature):\n"
        "    question = dspy.InputField()\n"
        "    answer = dspy.OutputField()\n"
        "dspy.configure(lm=MinimaLlmDSPyLM(backend))"
    )
    cells = [
        WHERE_AM_I,
        setup,
        'print("sync", dspy.Predict(QA)(question="What is 2+2?").answer)',
        'r = await dspy.ChainOfThought(QA).acall(question="Capital of France?")\nprint("async", r.answer)',
        'rs = await asyncio.gather(*[dspy.Predict(QA).acall(question=f"g{i}") for i in range(20)])\n'
        'print("gather", sum(p.answer == f"answer for: g{i}" for i, p in enumerate(rs)))',
        'ex = [dspy.Example(question=f"b{i}").with_inputs("question") for i in range(12)]\n'
        'out = dspy.Predict(QA).batch(ex, num_threads=4, disable_progress_bar=True)\n'
        'print("batch", len(out))',
    ]
    results = kernel.run_all(cells)
    _assert_own_interpreter(_text(results[0]["outputs"]))
    assert [r["status"] for r in results] == ["ok"] * len(cells), [r["outputs"] for r in results]
    texts = [_text(r["outputs"]).strip() for r in results[2:]]
    assert texts == ["sync 4", "async Paris", "gather 20", "batch 12"]


def test_dask_plain_compute_in_a_kernel_threads_and_interrupt(kernel, kernel_env):
    """In a kernel, a plain .compute() on the threaded scheduler shows minima's widget in its own
    cell; an interrupted one closes its bar as interrupted and opens no other."""
    with MockServer(latency_s=0.2) as server:
        setup = (
            "import dask, dask.dataframe as dd, pandas as pd, minima_nb, minima_nb.dask\n"
            "from minima_nb.integrations.dask import live\n"
            f"minima_nb.configure(base_url={server.base_url!r}, model='mock-model', "
            f"cache_dir={str(kernel_env)!r}, rpm=0, batch={{'num_workers': 4}})\n"
            "dask.config.set(scheduler='threads')\n"
            "ddf = dd.from_pandas(pd.DataFrame({'prompt': [f'k {i}' for i in range(40)]}), npartitions=4)\n"
            "answers = ddf.minima.generate('prompt')"
        )
        show = ("_, status, last = live.hub().history[-1]\n"
                "print('view', status, (last.total, last.done, last.cached))")
        results = kernel.run_all([WHERE_AM_I, setup, "out = answers.compute()", show])
        assert [r["status"] for r in results] == ["ok"] * 4, [r["outputs"] for r in results]
        assert _has_widget(results[2]["outputs"]) and not _has_widget(results[1]["outputs"])
        assert "view done (40, 40, 0)" in _text(results[3]["outputs"])
        long = "long = dd.from_pandas(pd.DataFrame({'prompt': [f'L {i}' for i in range(400)]}), npartitions=2)"
        kernel.run_all([long])
        interrupter = threading.Thread(target=_interrupt_when_busy,
                                       args=(kernel.km, server, 60, 30.0), daemon=True)
        interrupter.start()
        [cell] = kernel.run_all(["long.minima.generate('prompt').compute()"])
        interrupter.join(timeout=CELL_TIMEOUT_S)
        [after] = kernel.run_all(["import time; time.sleep(1.0)\n" + show
                                  + "\nprint('open', len(live.hub()._open))"])
        if after["status"] == "aborted":  # ipykernel's stop-on-error (see the test above)
            [after] = kernel.run_all([show + "\nprint('open', len(live.hub()._open))"])
    assert cell["status"] == "error" and _has_widget(cell["outputs"])
    shown = _text(after["outputs"])
    assert "view interrupted" in shown and "open 0" in shown, shown

