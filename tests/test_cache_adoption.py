"""model_synonyms and cache_lookup_dirs (minima-llm 0.2.7's semantics) and cache_source.

A miss is looked up under every synonym of the model and in every lookup cache (read-only);
the newest row wins and is copied into cache_dir under the effective model name. Real SQLite
files, the embedded mock server, and the real minima-llm 0.2.8 in a subprocess where its own
behaviour is the reference.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
import yaml
from _mock_backend import close_backend
from test_legacy_cache import PROMPTS, batch, minima_llm, msgs

from minima_nb.cache import CACHE_FILENAME
from minima_nb.config import MinimaLlmConfig
from minima_nb.engine.backend import OpenAIMinimaLlm
from minima_nb.engine.sync import run_sync
from minima_nb.errors import CacheError, ConfigError
from minima_nb.testing import MockServer, mock_answer
from minima_nb.types import MinimaLlmRequest

OLD, NEW = "old-name", "mock-model"  # the model's former name, and the configured one


@pytest.fixture(scope="module")
def server():
    with MockServer() as srv:
        yield srv


def make_backend(server: MockServer, directory: Path, **settings) -> OpenAIMinimaLlm:
    """A backend on the mock server with its cache in ``directory``; model NEW unless given."""
    settings.setdefault("model", NEW)
    return OpenAIMinimaLlm(MinimaLlmConfig(base_url=server.base_url, rpm=0, cache_dir=str(directory), **settings))


def query(directory: Path, sql: str, params: tuple = ()) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(directory / CACHE_FILENAME)) as conn, conn:
        return conn.execute(sql, params).fetchall()


def fill(server: MockServer, directory: Path, prompts: list[str], **settings) -> None:
    """minima_nb answers ``prompts`` into ``directory`` (its own table)."""
    llm = make_backend(server, directory, **settings)
    try:
        batch(llm, prompts)
    finally:
        close_backend(llm)


def run(server: MockServer, directory: Path, prompts: list[str], **settings) -> list:
    """minima_nb's run_batched on ``directory``; the results."""
    llm = make_backend(server, directory, **settings)
    try:
        return batch(llm, prompts)
    finally:
        close_backend(llm)


def answer(prompt: str, model: str = NEW) -> str:
    return mock_answer(msgs(prompt), model)


# -- synonyms -------------------------------------------------------------------------------------


def test_synonym_hit_in_our_table_is_copied_under_the_effective_name(server, tmp_path):
    """Rows stored under the old name answer the new one: "synonym:<old>", then "primary"."""
    directory = tmp_path / "cache"
    fill(server, directory, PROMPTS, model=OLD)
    stored = dict(query(directory, "SELECT messages, created_at FROM responses WHERE model = ?", (OLD,)))
    server.reset_counts()
    llm = make_backend(server, directory, model_synonyms=(OLD,))
    try:
        first = batch(llm, PROMPTS)
        second = batch(llm, PROMPTS)
    finally:
        close_backend(llm)
    assert server.requests_total == 0
    assert [r.text for r in first] == [answer(p, OLD) for p in PROMPTS]
    assert {r.cache_source for r in first} == {f"synonym:{OLD}"}
    assert {r.cache_source for r in second} == {"primary"}
    copied = dict(query(directory, "SELECT messages, created_at FROM responses WHERE model = ?", (NEW,)))
    assert copied == stored  # the same requests, with each row's original timestamp


def test_synonym_hit_in_minima_llms_table(server, tmp_path):
    """minima-llm answered under the old name: "legacy:synonym:<old>" for the new one."""
    directory = tmp_path / "cache"
    minima_llm_rows = minima_llm_old_name(server, directory, PROMPTS[:2])
    server.reset_counts()
    results = run(server, directory, PROMPTS[:2], model_synonyms=(OLD,))
    assert server.requests_total == 0
    assert [r.text for r in results] == [r["text"] for r in minima_llm_rows]
    assert {r.cache_source for r in results} == {f"legacy:synonym:{OLD}"}


def minima_llm_old_name(server: MockServer, directory: Path, prompts: list[str]) -> list[dict]:
    """minima-llm 0.2.8 configured with the old model name answers ``prompts``."""
    results = minima_llm(server, directory, prompts, model=OLD)
    assert [r["text"] for r in results] == [answer(p, OLD) for p in prompts]
    return results


def test_an_unrelated_model_does_not_use_the_synonyms(server, tmp_path):
    """A request for another model keeps its own key alone (as in minima-llm 0.2.7)."""
    directory = tmp_path / "cache"
    fill(server, directory, PROMPTS[:1], model=OLD)
    server.reset_counts()
    llm = make_backend(server, directory, model_synonyms=(OLD,))
    try:
        unrelated = batch(llm, PROMPTS[:1], model="unrelated")[0]  # the request names another model
        related = batch(llm, PROMPTS[:1], model=NEW)[0]
    finally:
        close_backend(llm)
    assert server.requests_total == 1 and unrelated.cache_source is None
    assert related.cache_source == f"synonym:{OLD}"


@pytest.mark.parametrize("newer", ["ours", "legacy"])
def test_the_newest_row_wins_across_synonyms_and_tables(server, tmp_path, newer):
    """Our table's synonym row against minima-llm's row under the effective name: newest wins."""
    directory = tmp_path / "cache"
    minima_llm(server, directory, PROMPTS[:1])  # minima-llm's row, under the configured name
    fill(server, directory, PROMPTS[:1], model=OLD)  # ours, under the old name
    old_at, new_at = 1_000.0, 2_000.0
    query(directory, "UPDATE cache SET created_at = ?", (new_at if newer == "legacy" else old_at,))
    query(directory, "UPDATE responses SET created_at = ?", (new_at if newer == "ours" else old_at,))
    server.reset_counts()
    result = run(server, directory, PROMPTS[:1], model_synonyms=(OLD,))[0]
    assert server.requests_total == 0
    if newer == "ours":
        assert (result.text, result.cache_source) == (answer(PROMPTS[0], OLD), f"synonym:{OLD}")
    else:
        assert (result.text, result.cache_source) == (answer(PROMPTS[0]), "legacy")
    assert query(directory, "SELECT created_at FROM responses WHERE model = ?", (NEW,)) == [(new_at,)]


# -- lookup dirs ----------------------------------------------------------------------------------


def snapshot(directory: Path) -> tuple[bytes, int]:
    """The lookup file's bytes and its row count, to show it was only read."""
    data = (directory / CACHE_FILENAME).read_bytes()
    return data, query(directory, "SELECT COUNT(*) FROM cache")[0][0]


def test_a_lookup_dir_of_minima_llm_is_read_only_and_its_hits_copied(server, tmp_path):
    """A hit in a lookup dir minima-llm wrote: "lookup:<dir>", copied into cache_dir; the lookup
    file is byte for byte unchanged."""
    shared, mine = tmp_path / "shared", tmp_path / "mine"
    minima_llm(server, shared, PROMPTS)
    before = snapshot(shared)
    server.reset_counts()
    first = run(server, mine, PROMPTS, cache_lookup_dirs=(str(shared),))
    second = run(server, mine, PROMPTS)  # no lookup dir now: the copies answer
    assert server.requests_total == 0
    assert {r.cache_source for r in first} == {f"lookup:{shared}"}
    assert {r.cache_source for r in second} == {"primary"}
    assert [r.text for r in second] == [answer(p) for p in PROMPTS]
    assert snapshot(shared) == before


def test_a_lookup_dir_whose_name_needs_escaping_in_a_uri(server, tmp_path):
    """The read-only URI of a lookup cache escapes "?", "#", "%" and spaces in its path."""
    shared, mine = tmp_path / "team #1 ?x=%20", tmp_path / "mine"
    fill(server, shared, PROMPTS[:2])
    server.reset_counts()
    results = run(server, mine, PROMPTS[:2], cache_lookup_dirs=(str(shared),))
    assert server.requests_total == 0
    assert {r.cache_source for r in results} == {f"lookup:{shared}"}


def test_a_lookup_dir_of_minima_nb_and_synonyms(server, tmp_path):
    """A lookup dir minima_nb wrote, under the old name: "lookup:<dir>:synonym:<old>";
    df.minima.generate takes the same path."""
    shared, mine = tmp_path / "shared", tmp_path / "mine"
    fill(server, shared, PROMPTS, model=OLD)
    before = (shared / CACHE_FILENAME).read_bytes()
    server.reset_counts()
    results = run(server, mine, PROMPTS[:3], cache_lookup_dirs=(str(shared),), model_synonyms=(OLD,))
    llm = make_backend(server, mine, cache_lookup_dirs=(str(shared),), model_synonyms=(OLD,))
    try:
        answers = pd.DataFrame({"prompt": PROMPTS}).minima.generate(
            "prompt", backend=llm, temperature=0.0, progress=False)
    finally:
        close_backend(llm)
    assert server.requests_total == 0
    assert {r.cache_source for r in results} == {f"lookup:{shared}:synonym:{OLD}"}
    assert list(answers) == [answer(p, OLD) for p in PROMPTS]
    assert (shared / CACHE_FILENAME).read_bytes() == before


def test_the_newest_row_wins_across_the_cache_and_lookup_dirs(server, tmp_path):
    """minima-llm's own row in cache_dir (older) loses to a lookup dir's newer row; minima-llm's
    row itself is left as it was."""
    shared, mine = tmp_path / "shared", tmp_path / "mine"
    minima_llm(server, mine, PROMPTS[:1])
    fill(server, shared, PROMPTS[:1], model=OLD)
    query(mine, "UPDATE cache SET created_at = 1000.0")
    query(shared, "UPDATE responses SET created_at = 3000.0")
    legacy_before = query(mine, "SELECT * FROM cache")
    llm = make_backend(server, mine, cache_lookup_dirs=(str(shared),), model_synonyms=(OLD,))
    try:
        result = batch(llm, PROMPTS[:1])[0]
        counts = dict(llm._adoption.counts)  # what a pulse reports as synonym / lookup hits
    finally:
        close_backend(llm)
    assert counts == {"lookup": 1, "synonym": 1}
    assert (result.text, result.cache_source) == (answer(PROMPTS[0], OLD), f"lookup:{shared}:synonym:{OLD}")
    assert query(mine, "SELECT * FROM cache") == legacy_before


def test_cache_source_strings_match_minima_llms(server, tmp_path):
    """Same files, same settings: minima-llm 0.2.8 and minima_nb name the hit's source alike."""
    shared = tmp_path / "shared"
    minima_llm_old_name(server, shared, PROMPTS[:1])
    theirs = minima_llm(server, tmp_path / "theirs", PROMPTS[:1], cache_lookup_dirs=[str(shared)],
                        model_synonyms=[OLD])
    ours = run(server, tmp_path / "ours", PROMPTS[:1], cache_lookup_dirs=(str(shared),),
               model_synonyms=(OLD,))
    assert theirs[0]["cache_source"] == ours[0].cache_source == f"lookup:{shared}:synonym:{OLD}"
    assert theirs[0]["text"] == ours[0].text


def test_one_batch_asking_under_both_names(server, tmp_path):
    """One batch asks the same prompt under the new and the old name; the lookup cache's one row
    (under the old name) answers both, each copied under its own name."""
    shared, mine = tmp_path / "shared", tmp_path / "mine"
    fill(server, shared, PROMPTS[:1], model=OLD)
    server.reset_counts()
    llm = make_backend(server, mine, cache_lookup_dirs=(str(shared),), model_synonyms=(OLD,))
    try:
        both = run_sync(llm.run_batched([
            MinimaLlmRequest("n", msgs(PROMPTS[0]), temperature=0.0),
            MinimaLlmRequest("o", msgs(PROMPTS[0]), temperature=0.0, model=OLD)], progress=False))
    finally:
        close_backend(llm)
    assert server.requests_total == 0
    assert [r.cache_source for r in both] == [f"lookup:{shared}:synonym:{OLD}", f"lookup:{shared}"]
    assert {r.text for r in both} == {answer(PROMPTS[0], OLD)}
    assert sorted(m for (m,) in query(mine, "SELECT model FROM responses")) == sorted([NEW, OLD])


def test_a_lookup_cache_that_is_not_sqlite_is_a_clear_error(server, tmp_path):
    """A damaged lookup file fails the lookup with a CacheError naming the setting."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / CACHE_FILENAME).write_bytes(b"not a database " * 100)
    llm = make_backend(server, tmp_path / "mine", cache_lookup_dirs=(str(shared),))
    try:
        with pytest.raises(CacheError, match="CACHE_LOOKUP_DIRS"):
            batch(llm, PROMPTS[:1])
    finally:
        close_backend(llm)


def test_a_missing_lookup_cache_fails_when_the_backend_is_made(server, tmp_path):
    """A lookup dir without a cache file is a CacheError naming it and the setting."""
    with pytest.raises(CacheError, match="nowhere.*CACHE_LOOKUP_DIRS"):
        make_backend(server, tmp_path / "cache", cache_lookup_dirs=(str(tmp_path / "nowhere"),))


def test_lookup_dirs_need_a_cache_dir(server, tmp_path):
    """As in minima-llm, a backend with lookup caches but no cache_dir is refused when made."""
    config = MinimaLlmConfig(base_url=server.base_url, model=NEW, cache_lookup_dirs=(str(tmp_path),))
    with pytest.raises(ConfigError, match="cache_lookup_dirs needs a cache_dir"):
        OpenAIMinimaLlm(config)


def test_a_namespace_keeps_minima_llms_rows_out(server, tmp_path):
    """minima-llm had no namespaces: its rows answer only the un-namespaced cache."""
    directory = tmp_path / "cache"
    minima_llm(server, directory, PROMPTS[:1])
    server.reset_counts()
    result = run(server, directory, PROMPTS[:1], cache_namespace="experiment-2")[0]
    assert server.requests_total == 1 and result.cache_source is None


# -- settings -------------------------------------------------------------------------------------


def test_settings_from_the_environment(monkeypatch, tmp_path):
    """MODEL_SYNONYMS and CACHE_LOOKUP_DIRS are comma-separated, as minima-llm reads them."""
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1")
    monkeypatch.setenv("OPENAI_MODEL", NEW)
    monkeypatch.setenv("CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("MODEL_SYNONYMS", f"{OLD}, openai/{NEW}")
    monkeypatch.setenv("CACHE_LOOKUP_DIRS", "/a/b, /c/d")
    config = MinimaLlmConfig.from_env()
    assert config.model_synonyms == (OLD, f"openai/{NEW}")
    assert config.cache_lookup_dirs == ("/a/b", "/c/d")
    assert "model_synonyms" in config.describe() and OLD in config.describe()


def test_settings_from_yaml_and_dicts(monkeypatch, tmp_path):
    """A YAML list or one comma-separated string; anything else is a ConfigError naming it."""
    monkeypatch.delenv("MODEL_SYNONYMS", raising=False)
    monkeypatch.delenv("CACHE_LOOKUP_DIRS", raising=False)
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump({"base_url": "http://127.0.0.1:1/v1", "model": NEW, "cache_dir": str(tmp_path),
                                    "model_synonyms": [OLD, "older"], "cache_lookup_dirs": [str(tmp_path / "x")]}))
    config = MinimaLlmConfig.from_yaml(path)
    assert config.model_synonyms == (OLD, "older")
    assert config.cache_lookup_dirs == (str(tmp_path / "x"),)
    assert MinimaLlmConfig.from_dict({"base_url": "http://127.0.0.1:1/v1", "model": NEW,
                                      "model_synonyms": f"{OLD},older"}).model_synonyms == (OLD, "older")
    with pytest.raises(ConfigError, match="model_synonyms"):
        MinimaLlmConfig.from_dict({"base_url": "http://127.0.0.1:1/v1", "model": NEW, "model_synonyms": 3})


def test_minima_llms_table_created_while_a_backend_runs_is_searched_from_then_on(server, tmp_path):
    """The adoption check keeps the file's table list between misses and reads it again when
    the schema changes: minima-llm creating its table in the same file mid-run is noticed."""
    directory = tmp_path / "cache"
    llm = make_backend(server, directory, model="mock-model")
    try:
        first = run_sync(llm.generate(MinimaLlmRequest("a", msgs("asked before minima-llm ran"))))
        assert not first.cached  # no minima-llm table yet: nothing to adopt from
        minima_llm(server, directory, PROMPTS[:1])  # its own table, in the file we have open
        server.reset_counts()
        request = MinimaLlmRequest("b", msgs(PROMPTS[0]), temperature=0.0)
        adopted = run_sync(llm.generate(request))
    finally:
        close_backend(llm)
    assert (adopted.cached, adopted.cache_source) == (True, "legacy")
    assert server.requests_total == 0
