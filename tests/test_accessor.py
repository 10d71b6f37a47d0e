"""The pandas accessor against the embedded mock server over a real socket and a real cache."""

from __future__ import annotations

import asyncio
import threading
import warnings

import pandas as pd
import pytest
from _mock_backend import close_backend, make_backend

import minima_nb  # noqa: F401  (registers df.minima)
from minima_nb.config import BatchConfig
from minima_nb.engine.sync import run_sync
from minima_nb.errors import BatchAborted, ConfigError
from minima_nb.notebook import session
from minima_nb.notebook.accessor import DETAIL_DTYPES, MISSING_PROMPT
from minima_nb.testing import mock_answer

DETAIL_COLUMNS = list(DETAIL_DTYPES)




def echo(prompt: str, model: str = "mock-model") -> str:
    return mock_answer([{"role": "user", "content": prompt}], model)


def gen(obj, *args, **kwargs):
    """generate() with progress off, unless a test asks for it."""
    kwargs.setdefault("progress", False)
    return obj.minima.generate(*args, **kwargs)


def test_column_of_strings(srv, backend):
    """Each row's string prompt gets its answer, as a string Series named after the column."""
    df = pd.DataFrame({"prompt": ["What is 2+2?", "Capital of France?", "hello"]})
    out = gen(df, "prompt", backend=backend)
    assert out.tolist() == ["4", "Paris", echo("hello")]
    assert out.dtype == "string" and out.name == "prompt"
    assert out.index.equals(df.index)


def test_column_of_message_lists(srv, backend):
    """A column of chat message lists is sent as-is."""
    chats = [[{"role": "system", "content": "terse"}, {"role": "user", "content": "What is 2+2?"}]]
    out = gen(pd.DataFrame({"chat": chats}), "chat", backend=backend)
    assert out.tolist() == ["4"]
    assert srv.last_request_json["messages"] == chats[0]


def test_system_prepended_to_string_prompts(srv, backend):
    """system= becomes the first message of a string prompt."""
    gen(pd.DataFrame({"p": ["hi"]}), "p", backend=backend, system="Be brief.")
    assert srv.last_request_json["messages"] == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]


def test_template_filled_from_row_fields(srv, backend):
    """A template that is not a column is filled from each row."""
    df = pd.DataFrame({"city": ["Paris", "Lima"], "topic": ["food", "trains"]})
    out = gen(df, "Tell me about {topic} in {city}.", backend=backend, name="blurb")
    assert out.tolist() == [echo("Tell me about food in Paris."), echo("Tell me about trains in Lima.")]
    assert out.name == "blurb"


def test_template_missing_field_names_it_and_the_columns(backend):
    """A template field that is not a column raises KeyError naming it and the columns."""
    df = pd.DataFrame({"city": ["Paris"]})
    with pytest.raises(KeyError, match=r"\{country\}.*'city'"):
        gen(df, "Capital of {country}?", backend=backend)


def test_unknown_column_explains_columns_and_templates(backend):
    """A prompt that is neither a column nor a template raises KeyError listing the columns."""
    df = pd.DataFrame({"prompt": ["x"]})
    with pytest.raises(KeyError, match=r"'promt' is not a column.*'prompt'.*template"):
        gen(df, "promt", backend=backend)


def test_missing_prompts_are_na_and_not_sent(srv, backend):
    """NaN, None, '' and [] prompts come back <NA> and never reach the server."""
    df = pd.DataFrame({"prompt": ["a", None, float("nan"), "", [], "b"]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # missing prompts alone are not a failure
        out = gen(df, "prompt", backend=backend)
    assert out.isna().tolist() == [False, True, True, True, True, False]
    assert srv.requests_total == 2


def test_duplicate_index_values_preserved(backend):
    """Results line up by position when index labels repeat."""
    df = pd.DataFrame({"prompt": ["a", "b", "c"]}, index=[5, 5, 7])
    out = gen(df, "prompt", backend=backend)
    assert out.index.tolist() == [5, 5, 7]
    assert out.tolist() == [echo("a"), echo("b"), echo("c")]


def test_identical_prompts_sent_once(srv, backend):
    """Repeated prompts are answered by one request."""
    df = pd.DataFrame({"prompt": ["same", "same", "same", "other"]})
    out = gen(df, "prompt", backend=backend)
    assert out.tolist() == [echo("same")] * 3 + [echo("other")]
    assert srv.requests_for("same") == 1


def test_failures_are_na_with_one_counting_warning(srv, backend):
    """A failed row is <NA>; one warning counts failures and points to details=True."""
    srv.script("bad", ["400"])
    df = pd.DataFrame({"prompt": ["good", "bad", None]})
    with pytest.warns(UserWarning) as caught:
        out = gen(df, "prompt", backend=backend)
    assert out.isna().tolist() == [False, True, True]
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "1 of 3 rows failed" in message and "ClientError" in message
    assert "details=True" in message and "1 rows had no prompt" in message


def test_details_columns_and_dtypes_when_all_succeed(backend):
    """details=True has every column with nullable dtypes; error is string even with no error."""
    df = pd.DataFrame({"prompt": ["a", "b"]}, index=["x", "y"])
    details = gen(df, "prompt", backend=backend, details=True)
    assert list(details.columns) == DETAIL_COLUMNS
    assert {c: str(t) for c, t in details.dtypes.items()} == DETAIL_DTYPES
    assert details.index.tolist() == ["x", "y"]
    assert details["error"].isna().all()
    assert details["model"].tolist() == ["mock-model", "mock-model"]
    assert (details["attempts"] == 1).all() and (details["output_tokens"] > 0).all()


def test_details_mixed_rows_round_trip_parquet(srv, backend, tmp_path):
    """A frame with success, failure and missing rows survives to_parquet/read_parquet."""
    srv.script("broken", ["400"])
    df = pd.DataFrame({"prompt": ["fine", "broken", None]})
    details = gen(df, "prompt", backend=backend, details=True)
    assert details["error"].tolist()[1].startswith("ClientError: ")
    assert details["error"].tolist()[2] == MISSING_PROMPT
    details.to_parquet(tmp_path / "details.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "details.parquet"), details)


def test_empty_frame_returns_empty_results_without_network(srv, backend):
    """An empty frame gives an empty Series / details frame and sends nothing."""
    df = pd.DataFrame({"prompt": pd.Series([], dtype=object)})
    out = gen(df, "prompt", backend=backend)
    details = gen(df, "prompt", backend=backend, details=True)
    assert len(out) == 0 and out.dtype == "string"
    assert list(details.columns) == DETAIL_COLUMNS and len(details) == 0
    assert {c: str(t) for c, t in details.dtypes.items()} == DETAIL_DTYPES
    assert srv.requests_total == 0


def test_frame_is_not_mutated(backend):
    """generate and sweep leave the frame exactly as it was."""
    df = pd.DataFrame({"prompt": ["a", None], "n": [1, 2]}, index=[3, 3])
    before = df.copy(deep=True)
    gen(df, "prompt", backend=backend)
    df.minima.sweep("prompt", backend=backend, progress=False, temperature=[0, 1])
    pd.testing.assert_frame_equal(df, before)


def test_second_run_served_from_cache(srv, backend):
    """Running the same call again sends nothing and marks every row cached."""
    df = pd.DataFrame({"prompt": [f"q{i}" for i in range(20)]})
    first = gen(df, "prompt", backend=backend, details=True)
    sent = srv.requests_total
    second = gen(df, "prompt", backend=backend, details=True)
    assert srv.requests_total == sent == 20
    assert not first["cached"].any() and second["cached"].all()
    assert second["text"].tolist() == first["text"].tolist()


def test_model_override_reaches_server(srv, backend):
    """model= replaces the backend's model for this call."""
    details = gen(pd.DataFrame({"p": ["hi"]}), "p", backend=backend, model="other-model",
                  details=True)
    assert srv.last_request_json["model"] == "other-model"
    assert details["model"].tolist() == ["other-model"]


def test_generation_parameters_reach_server(srv, backend):
    """temperature, max_tokens and extra are sent in the request body."""
    gen(pd.DataFrame({"p": ["hi"]}), "p", backend=backend, temperature=0.3, max_tokens=7,
        extra={"top_p": 0.5})
    body = srv.last_request_json
    assert (body["temperature"], body["max_tokens"], body["top_p"]) == (0.3, 7, 0.5)


def test_non_string_prompt_raises_type_error_naming_row(backend):
    """An int prompt raises TypeError naming the column, the row label and the type."""
    df = pd.DataFrame({"prompt": ["ok", 42]}, index=["a", "b"])
    with pytest.raises(TypeError, match=r"column 'prompt', row 'b'.*int"):
        gen(df, "prompt", backend=backend)


def test_malformed_message_list_names_row(backend):
    """A message without a role raises ValueError naming the row."""
    df = pd.DataFrame({"chat": [[{"content": "no role"}]]}, index=["r1"])
    with pytest.raises(ValueError, match=r"row 'r1'.*role"):
        gen(df, "chat", backend=backend)


def test_series_accessor(srv, backend):
    """series.minima.generate uses the series as the prompt column."""
    s = pd.Series(["What is 2+2?", None], index=[9, 9], name="q")
    out = s.minima.generate(backend=backend, progress=False)
    assert out.index.tolist() == [9, 9] and out.name == "q"
    assert out.tolist()[0] == "4" and pd.isna(out.tolist()[1])


def test_sweep_shape_columns_and_pivot(srv, backend):
    """sweep runs rows x combinations in one batch; the long frame pivots by model and temperature."""
    df = pd.DataFrame({"prompt": ["a", "b", "c"]}, index=[10, 11, 11])
    runs = df.minima.sweep("prompt", backend=backend, progress=False,
                           model=["m1", "m2"], temperature=[0.0, 0.7], seed=3)
    assert runs.shape == (12, 4 + len(DETAIL_COLUMNS) - 1)
    assert list(runs.columns) == ["row", "model", "temperature", "seed",
                                  *[c for c in DETAIL_COLUMNS if c != "model"]]
    assert runs["row"].tolist() == [10] * 4 + [11] * 8
    assert srv.requests_total == 12
    wide = runs.pivot_table(index="row", columns=["model", "temperature"], values="text",
                            aggfunc="first")
    assert wide.shape == (2, 4)
    assert wide.loc[10, ("m2", 0.7)] == runs["text"].iloc[3]


def test_sweep_model_column_defaults_to_configured_model(backend):
    """When model is not swept, the model column holds the backend's model."""
    runs = pd.DataFrame({"p": ["x"]}).minima.sweep("p", backend=backend, progress=False,
                                                    temperature=[0, 1])
    assert runs["model"].tolist() == ["mock-model", "mock-model"]
    assert list(runs.columns[:3]) == ["row", "model", "temperature"]


def test_agenerate_inside_asyncio_run(backend):
    """agenerate is awaitable on the caller's loop and gives the same Series."""
    df = pd.DataFrame({"prompt": ["What is 2+2?", "x"]})

    async def main():
        try:
            return await df.minima.agenerate("prompt", backend=backend, progress=False)
        finally:
            await backend.aclose()

    out = asyncio.run(main())
    assert out.tolist() == ["4", echo("x")] and out.dtype == "string"


def test_sync_generate_inside_running_loop(backend):
    """The sync call works where an event loop already runs (as in a kernel cell)."""
    df = pd.DataFrame({"prompt": ["Capital of France?"]})

    async def cell():
        return gen(df, "prompt", backend=backend)

    assert asyncio.run(cell()).tolist() == ["Paris"]


def test_unconfigured_default_backend_raises_config_error(monkeypatch):
    """With no backend passed and none configured, the error says what to set."""
    for var in ("OPENAI_BASE_URL", "OPENAI_MODEL"):
        monkeypatch.delenv(var, raising=False)
    session.reset()
    try:
        with pytest.raises(ConfigError, match="OPENAI_BASE_URL"):
            gen(pd.DataFrame({"prompt": ["x"]}), "prompt")
    finally:
        session.reset()


def test_default_backend_from_configure(srv, tmp_path):
    """minima_nb.configure() sets the backend used when none is passed."""
    session.configure(base_url=srv.base_url, model="mock-model", cache_dir=str(tmp_path), rpm=0)
    try:
        assert gen(pd.DataFrame({"p": ["What is 2+2?"]}), "p").tolist() == ["4"]
    finally:
        run_sync(session.get_backend().aclose())
        session.reset()


def test_batch_aborted_carries_partial_details(srv, tmp_path):
    """Past the failure budget, BatchAborted carries exc.partial aligned to the index."""
    llm = make_backend(srv, tmp_path, batch=BatchConfig(num_workers=1, max_failures=1))
    srv.script("bad1", ["400"])
    srv.script("bad2", ["400"])
    df = pd.DataFrame({"prompt": ["ok0", "bad1", "bad2", "later"]}, index=list("wxyz"))
    try:
        with pytest.raises(BatchAborted) as info:
            gen(df, "prompt", backend=llm)
    finally:
        close_backend(llm)
    partial = info.value.partial
    assert list(partial.columns) == DETAIL_COLUMNS and partial.index.tolist() == list("wxyz")
    assert partial["text"].tolist()[0] == echo("ok0")
    assert partial["error"].str.startswith("ClientError").tolist()[1:3] == [True, True]
    assert partial.loc["z"].isna().all()  # never ran
    assert "exc.partial" in "".join(getattr(info.value, "__notes__", ["exc.partial"]))


class RecordingSink:
    """A progress sink that remembers what it was given and on which thread it was closed."""

    def __init__(self) -> None:
        self.snapshots = []
        self.closed = []

    def update(self, snapshot) -> None:
        self.snapshots.append(snapshot)

    def draw(self) -> None:
        pass

    def close(self, status="done") -> None:
        self.closed.append((status, threading.get_ident()))


def test_progress_sink_closed_on_calling_thread(backend):
    """The sync call closes the progress display once, 'done', on the caller's thread."""
    sink = RecordingSink()
    gen(pd.DataFrame({"prompt": ["a", "b", "a"]}), "prompt", backend=backend, progress=sink)
    assert sink.closed == [("done", threading.get_ident())]
    last = sink.snapshots[-1]
    assert last.done == last.total == 3
