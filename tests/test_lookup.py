"""The fast path of cached re-runs: key_function, PromptCache.get_texts, backend.lookup, accessor.

Against the embedded mock server over a real socket and a real SQLite cache under tmp_path.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import random
import types
from collections.abc import Mapping
from typing import Any

import pandas as pd
import pytest
from _mock_backend import close_backend, make_backend

import minima_nb  # noqa: F401  (registers df.minima)
from minima_nb.cache import CacheRow, PromptCache, reads
from minima_nb.cache.key import cache_key, key_function, keys_function
from minima_nb.config import BatchConfig, MinimaLlmConfig
from minima_nb.engine.backend import OpenAIMinimaLlm
from minima_nb.engine.sync import run_sync
from minima_nb.errors import BatchAborted
from minima_nb.testing import mock_answer
from minima_nb.types import MinimaLlmRequest

# -- helpers --------------------------------------------------------------------------------------




def msgs(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def echo(prompt: str, model: str = "mock-model") -> str:
    return mock_answer(msgs(prompt), model)


def gen(obj, *args, **kwargs):
    """generate() with progress off, unless a test asks for it."""
    kwargs.setdefault("progress", False)
    return obj.minima.generate(*args, **kwargs)


def batch(llm: OpenAIMinimaLlm, requests: list[MinimaLlmRequest], **kwargs) -> list[Any]:
    kwargs.setdefault("progress", False)
    return run_sync(llm.run_batched(requests, **kwargs))


def requests_for(prompts: list[str], **fields) -> list[MinimaLlmRequest]:
    return [MinimaLlmRequest(request_id=f"r{i}", messages=msgs(p), **fields)
            for i, p in enumerate(prompts)]


class RecordingSink:
    """A progress sink that remembers its snapshots, its closings, and whether gc was on."""

    def __init__(self) -> None:
        self.snapshots = []
        self.closed = []
        self.gc_enabled = []

    def update(self, snapshot) -> None:
        self.snapshots.append(snapshot)
        self.gc_enabled.append(gc.isenabled())

    def draw(self) -> None:
        pass

    def close(self, status="done") -> None:
        self.closed.append(status)


# -- the cache key: an independent reference ------------------------------------------------------


def reference_normalise(obj: Any) -> Any:
    """Integral floats to ints, tuples to lists, mappings to dicts, recursively (bools kept)."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, float):
        return int(obj) if obj.is_integer() else obj
    if isinstance(obj, Mapping):
        return {k: reference_normalise(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [reference_normalise(v) for v in obj]
    raise AssertionError(f"unexpected value in test data: {obj!r}")


def reference_key(model, messages, temperature, max_tokens, extra, namespace) -> tuple[str, str]:
    payload = {"model": model, "messages": messages, "temperature": temperature,
               "max_tokens": max_tokens, "extra": extra if extra else None}
    if namespace is not None:
        payload["namespace"] = namespace
    canonical = json.dumps(reference_normalise(payload), sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest(), canonical


_CHARS = ['a', 'Z', '0', ' ', '"', "'", '\\', '/', '\n', '\r', '\t', '\x00', '\x08', '\x1f',
          '\x7f', '\x85', 'é', 'ß', '中', '文', '\u2028', '\u2029', '\ufeff', '😀', '👩‍💻', '{', '}',
          ':', ',', '[', ']']


def rand_text(rng: random.Random) -> str:
    return "".join(rng.choice(_CHARS) for _ in range(rng.choice([0, 0, 1, 3, 8, 20])))


def rand_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.choice(["str", "str", "int", "float", "intfloat", "bool", "none", "list", "tuple",
                       "dict"] if depth < 2 else ["str", "int", "float", "intfloat", "bool", "none"])
    if kind == "str":
        return rand_text(rng)
    if kind == "int":
        return rng.choice([0, 1, -7, 2**40])
    if kind == "float":
        return rng.choice([0.5, -2.25, 1e-9, 3.14159, float("inf")])
    if kind == "intfloat":
        return rng.choice([0.0, 1.0, -3.0, 1e20, -0.0])
    if kind == "bool":
        return rng.choice([True, False])
    if kind == "none":
        return None
    items = [rand_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if kind == "list":
        return items
    if kind == "tuple":
        return tuple(items)
    return rand_dict(rng, depth + 1)


def rand_dict(rng: random.Random, depth: int) -> dict[str, Any]:
    names = [rand_text(rng) or "k" for _ in range(rng.randint(0, 3))]
    rng.shuffle(names)
    return {name: rand_value(rng, depth) for name in names}


def rand_message(rng: random.Random) -> Any:
    shape = rng.choice(["usual", "usual", "usual", "reversed", "extra_str", "non_str", "one_key",
                        "empty", "content_list", "proxy"])
    role, content = rng.choice(["user", "system", "assistant", rand_text(rng)]), rand_text(rng)
    if shape == "usual":
        return {"role": role, "content": content}
    if shape == "reversed":
        return {"content": content, "role": role}
    if shape == "extra_str":
        fields = [("role", role), ("content", content), ("name", rand_text(rng)),
                  (rand_text(rng) or "x", rand_text(rng))]
        rng.shuffle(fields)
        return dict(fields)
    if shape == "non_str":
        fields = [("role", role), ("content", content), ("weight", rand_value(rng, 1)),
                  ("n", rng.choice([1, 1.0, 2.5, (1, 2.0), [0.0, "x"]]))]
        rng.shuffle(fields)
        return dict(fields)
    if shape == "one_key":
        return {"role": role}
    if shape == "empty":
        return {}
    if shape == "content_list":
        return {"role": role, "content": [{"type": "text", "text": content}, 3.0]}
    return types.MappingProxyType({"role": role, "content": content})


def rand_messages(rng: random.Random) -> Any:
    messages = [rand_message(rng) for _ in range(rng.randint(0, 4))]
    return tuple(messages) if rng.random() < 0.1 else messages


def rand_params(rng: random.Random) -> tuple[Any, ...]:
    model = rng.choice(["mock-model", "gpt-4o", rand_text(rng)])
    temperature = rng.choice([None, 0, 1, 0.0, 1.0, 0.7, 2, True, False])
    max_tokens = rng.choice([None, 1, 256, 100.0, 0])
    extra = rng.choice([None, {}, {"top_p": 1.0}, {"seed": 3, "stop": ("a", "b")},
                        {"response_format": {"type": "json"}, "logit_bias": {"50256": -100.0}},
                        rand_dict(rng, 0)])
    namespace = rng.choice([None, None, "", "exp-1", rand_text(rng)])
    return model, temperature, max_tokens, extra, namespace


def test_cache_key_matches_reference_spelling_for_random_requests():
    """cache_key is the sha256 of the canonical JSON spelled by json.dumps after normalising."""
    rng = random.Random(20261125)
    for _ in range(3000):
        messages = rand_messages(rng)
        model, temperature, max_tokens, extra, namespace = rand_params(rng)
        expected = reference_key(model, messages, temperature, max_tokens, extra, namespace)
        got = cache_key(model, messages, temperature, max_tokens, extra, namespace)
        assert got == expected, (model, messages, temperature, max_tokens, extra, namespace)


def test_key_function_reused_across_messages_equals_cache_key():
    """One key_function applied to many message lists gives each list's own cache_key."""
    rng = random.Random(7)
    for _ in range(100):
        params = rand_params(rng)
        model, temperature, max_tokens, extra, namespace = params
        key_of = key_function(model, temperature, max_tokens, extra, namespace)
        for _ in range(10):
            messages = rand_messages(rng)
            assert key_of(messages) == cache_key(model, messages, temperature, max_tokens, extra,
                                                 namespace)
            assert key_of(messages) == reference_key(model, messages, *params[1:])


def _one_message_prompt(rng: random.Random) -> Any:
    """The shape keys_function hashes around its text, and near misses of that shape."""
    role = rng.choice(["user", "system", "assistant", rand_text(rng), f"role-{rng.randint(0, 60)}"])
    content = rand_text(rng)
    return rng.choice([
        [{"role": role, "content": content}],
        [{"content": content, "role": role}],  # the other insertion order hashes alike
        [{"role": role, "content": content, "name": "n"}],  # a third field
        [{"role": role, "content": 1.0}],  # a number to normalise
        [{"role": role, "content": [{"type": "text", "text": content}]}],  # content parts
        [{"role": role}],
        ({"role": role, "content": content},),  # a tuple of one
        [{"role": role, "content": content}, {"role": "user", "content": content}],
        None,
    ])


def test_keys_function_equals_cache_key_for_each_prompt():
    """keys_function(...)(prompts) is each prompt's cache_key (None for None), over unicode texts,
    many roles, extra fields, numbers, namespaces, and message lists of other shapes."""
    rng = random.Random(16)
    for _ in range(60):
        params = rand_params(rng)
        model, temperature, max_tokens, extra, namespace = params
        prompts = [_one_message_prompt(rng) if rng.random() < 0.8 else rand_messages(rng) for _ in range(40)]
        keys = keys_function(model, temperature, max_tokens, extra, namespace)(prompts)
        assert keys == [None if p is None else reference_key(model, p, *params[1:])[0] for p in prompts]


def test_keys_function_is_reusable_across_calls():
    """One keys_function over two lists (more roles than it keeps spelled) gives the same keys."""
    keys_of = keys_function("m", 0.0, 64, {"seed": 1}, "exp")
    prompts = [[{"role": f"r{i}", "content": f"q {i} é 😀"}] for i in range(100)]
    first = keys_of(prompts)
    assert keys_of(prompts[::-1]) == first[::-1]
    assert first == [cache_key("m", p, 0, 64, {"seed": 1}, "exp")[0] for p in prompts]


def test_key_distinguishes_what_the_server_sees():
    """Keys differ when the sent request differs and agree when only the spelling differs."""
    m = msgs("hi")
    base = cache_key("m", m, 1, None, None)
    assert cache_key("m", m, 1.0, None, None) == base  # 1.0 is sent as 1
    assert cache_key("m", m, True, None, None) != base  # true is not 1 on the wire
    assert cache_key("m", m, 1, None, {}) == base  # {} and None send the same request
    assert cache_key("m", m, 1, None, None, "ns") != base
    assert cache_key("m", [{"content": "hi", "role": "user"}], 1, None, None) == base
    assert cache_key("m", msgs("hi "), 1, None, None) != base


# -- run_batched: request identity ----------------------------------------------------------------


@pytest.mark.parametrize("cached", [True, False], ids=["cache", "no-cache"])
def test_temperature_true_and_one_are_two_requests(srv, tmp_path, cached):
    """temperature=True and temperature=1 are sent separately; 1 and 1.0 share one request."""
    llm = make_backend(srv, tmp_path / "c" if cached else None)
    try:
        m = msgs("same prompt")
        results = batch(llm, [MinimaLlmRequest("a", m, temperature=True),
                              MinimaLlmRequest("b", m, temperature=1)])
        assert srv.requests_total == 2
        assert [r.request_id for r in results] == ["a", "b"]
        srv.reset_counts()
        batch(llm, [MinimaLlmRequest("c", msgs("other"), temperature=1),
                    MinimaLlmRequest("d", msgs("other"), temperature=1.0),
                    MinimaLlmRequest("e", msgs("other"), max_tokens=True),
                    MinimaLlmRequest("f", msgs("other"), max_tokens=1)])
        assert srv.requests_total == 3
    finally:
        close_backend(llm)


@pytest.mark.parametrize("cached", [True, False], ids=["cache", "no-cache"])
def test_unhashable_request_field_is_still_keyed_and_sent(srv, tmp_path, cached):
    """A list passed as temperature cannot key the shared key functions; the batch still runs."""
    llm = make_backend(srv, tmp_path / "c" if cached else None)
    try:
        results = batch(llm, [MinimaLlmRequest("a", msgs("p"), temperature=[0.5]),
                              MinimaLlmRequest("b", msgs("p"), temperature=[0.5])])
        assert [r.request_id for r in results] == ["a", "b"]
        assert srv.requests_total == 1  # identical requests are still sent once
    finally:
        close_backend(llm)


# -- backend.lookup -------------------------------------------------------------------------------


def test_lookup_rows_texts_and_none_in_order(srv, backend):
    """lookup answers hits with the stored row (or text), misses and None prompts with None."""
    answered = batch(backend, requests_for(["alpha", "beta"]))
    sent = srv.requests_total
    prompts = [msgs("alpha"), msgs("never asked"), None, msgs("alpha"), msgs("beta")]
    rows = backend.lookup(prompts)
    assert srv.requests_total == sent  # lookup sends nothing
    assert [r is None for r in rows] == [False, True, True, False, False]
    first = answered[0]
    expected = (echo("alpha"), first.input_tokens, first.output_tokens, first.finish_reason,
                first.latency_s, "mock-model", cache_key("mock-model", msgs("alpha"), None, None,
                                                         None)[0])
    assert rows[0] == rows[3] == expected
    assert rows[4][0] == echo("beta") == answered[1].text
    texts = backend.lookup(prompts, text_only=True)
    assert texts == [echo("alpha"), None, None, echo("alpha"), echo("beta")]


def test_lookup_counts_hits_not_misses(backend):
    """cache_stats() gains lookup's hits; its misses are left for run_batched to count."""
    batch(backend, requests_for(["one", "two"]))
    before = backend.cache_stats()
    backend.lookup([msgs("one"), msgs("two"), msgs("three"), None])
    after = backend.cache_stats()
    assert after["hits"] == before["hits"] + 2
    assert after["misses"] == before["misses"]
    backend.lookup([msgs("four"), msgs("one")], text_only=True)
    assert backend.cache_stats()["misses"] == before["misses"]
    assert backend.cache_stats()["hits"] == before["hits"] + 3


def test_lookup_request_fields_select_the_rows(srv, backend):
    """lookup hits only rows answered under the same model, temperature, max_tokens and extra."""
    batch(backend, [MinimaLlmRequest("a", msgs("q"), model="mock-model-large")])
    batch(backend, [MinimaLlmRequest("b", msgs("p"), temperature=0.5, max_tokens=50,
                                     extra={"top_p": 0.9})])
    large = backend.lookup([msgs("q"), msgs("p")], model="mock-model-large", text_only=True)
    assert large == [echo("q", "mock-model-large"), None]
    assert backend.lookup([msgs("q")]) == [None]  # not answered under the configured model
    assert backend.lookup([msgs("p")], temperature=0.5, max_tokens=50, extra={"top_p": 0.9},
                          text_only=True) == [echo("p")]
    assert backend.lookup([msgs("p")], temperature=0.5, max_tokens=50) == [None]
    assert backend.lookup([msgs("p")]) == [None]


def test_lookup_without_cache_force_refresh_or_other_namespace_misses(srv, tmp_path):
    """No cache_dir or force_refresh in the config finds nothing; a namespace sees its own rows."""
    warm = make_backend(srv, tmp_path / "c")
    no_cache = make_backend(srv, None)
    refresh = make_backend(srv, tmp_path / "c", force_refresh=True)
    other_namespace = make_backend(srv, tmp_path / "c", cache_namespace="exp-2")
    try:
        batch(warm, requests_for(["x", "y"]))
        prompts = [msgs("x"), None, msgs("y")]
        assert warm.lookup(prompts, text_only=True) == [echo("x"), None, echo("y")]
        assert no_cache.lookup(prompts) == [None, None, None]
        assert refresh.lookup(prompts) == [None, None, None]
        assert refresh.lookup(prompts, text_only=True) == [None, None, None]
        assert other_namespace.lookup(prompts) == [None, None, None]
        batch(other_namespace, requests_for(["x"]))
        assert other_namespace.lookup(prompts, text_only=True) == [echo("x"), None, None]
    finally:
        for llm in (warm, no_cache, refresh, other_namespace):
            close_backend(llm)


# -- PromptCache.get_texts / get_many_rows --------------------------------------------------------


def _row(key: str, text: str, tokens: int) -> CacheRow:
    return CacheRow(key=key, namespace=None, model="m", messages=msgs(text), params={}, text=text,
                    input_tokens=tokens, output_tokens=tokens + 1, finish_reason="stop",
                    latency_s=0.25)


def test_bulk_reads_answer_queued_and_committed_rows(tmp_path):
    """get_texts/get_many_rows answer rows still queued for writing and rows read from the file."""
    cache = PromptCache(tmp_path, flush_interval_s=60)
    try:
        cache.put(_row("k1", "first", 3))
        assert cache.count() == 0  # still queued, not in the file
        assert cache.get_texts(["k1", "nope"]) == {"k1": "first"}
        assert cache.get_many_rows(["nope", "k1"]) == {
            "k1": ("first", 3, 4, "stop", 0.25, "m", "k1")}
        cache.flush()
        assert cache.count() == 1
        cache.put(_row("k2", "second", 5))  # queued again, beside a committed row
        assert cache.get_texts(["k1", "k2", "k1", "nope"]) == {"k1": "first", "k2": "second"}
        assert cache.get_many_rows(["k2", "k1"]) == {
            "k1": ("first", 3, 4, "stop", 0.25, "m", "k1"),
            "k2": ("second", 5, 6, "stop", 0.25, "m", "k2")}
        cache.flush()
        assert cache.get_texts(["k2"]) == {"k2": "second"}
    finally:
        cache.close()


def test_texts_of_lays_answers_out_in_the_callers_order(tmp_path):
    """texts_of gives one entry per key, in order: queued and committed texts, None for a miss,
    a None key or a repeat of either."""
    with PromptCache(tmp_path, flush_interval_s=60) as cache:
        cache.put(_row("k1", "first", 3))
        cache.flush()
        cache.put(_row("k2", "second é", 5))  # still queued
        keys = ["k2", None, "nope", "k1", "k2", None, "nope"]
        assert cache.texts_of(keys) == ["second é", None, None, "first", "second é", None, None]
        assert cache.texts_of([]) == []
        stats = cache.stats()
        assert (stats["hits"], stats["misses"]) == (3, 2)  # each key given, repeats too


@pytest.mark.parametrize("key_of", [str, lambda i: f'k"{i}\\é\n😀\u2028'], ids=["plain", "escaped"])
def test_texts_of_keeps_order_over_many_reads(tmp_path, key_of):
    """Over more keys than one read takes, shuffled, repeated and missing, texts_of answers each
    position with its key's text; keys that need JSON escaping too; the IN path agrees."""
    rng = random.Random(5)
    with PromptCache(tmp_path, flush_interval_s=60) as cache:
        stored = {key_of(i): f"text {i} ü" for i in range(0, 12_000, 2)}
        cache.put_many([(k, None, "m", "[]", "{}", t, None, None, None, None, None, 1.0) for k, t in stored.items()])
        cache.flush()
        keys = [key_of(rng.randrange(12_000)) for _ in range(11_000)] + [None, key_of(4)]
        assert cache.texts_of(keys) == [None if k is None else stored.get(k) for k in keys]
        # the path of an SQLite built without JSON functions gives the same texts
        assert reads._texts_keyed(cache._query, keys[:-2]) == cache.texts_of(keys[:-2])  # noqa: SLF001


def test_bulk_reads_count_misses_only_when_asked(tmp_path):
    """count_misses=False leaves misses unchanged; hits are counted either way."""
    with PromptCache(tmp_path, flush_interval_s=60) as cache:
        cache.put(_row("k1", "first", 3))
        start = cache.stats()
        cache.get_texts(["k1", "a", "b"], count_misses=False)
        cache.get_many_rows(["k1", "c"], count_misses=False)
        mid = cache.stats()
        assert (mid["hits"], mid["misses"]) == (start["hits"] + 2, start["misses"])
        cache.get_texts(["k1", "a", "b"])
        cache.get_many_rows(["c"])
        end = cache.stats()
        assert (end["hits"], end["misses"]) == (mid["hits"] + 1, mid["misses"] + 3)


# -- the accessor's fast path ---------------------------------------------------------------------


def _mixed_frame(cached: list[str], new: list[str]) -> pd.DataFrame:
    prompts = [p for pair in zip(cached[: len(new)], new, strict=True) for p in pair]
    prompts += cached[len(new):]
    return pd.DataFrame({"prompt": prompts}, index=[f"row{i}" for i in range(len(prompts))][::-1])


def test_warm_cache_sends_only_new_rows(srv, backend):
    """With 10 of 15 prompts cached, 5 requests go out and all 15 texts come back in order."""
    cached = [f"old {i}" for i in range(10)]
    gen(pd.DataFrame({"prompt": cached}), "prompt", backend=backend)
    srv.reset_counts()
    df = _mixed_frame(cached, [f"new {i}" for i in range(5)])
    out = gen(df, "prompt", backend=backend)
    assert srv.requests_total == 5
    assert out.tolist() == [echo(p) for p in df["prompt"]]
    assert out.index.equals(df.index) and out.name == "prompt" and out.dtype == "string"


def test_force_refresh_call_resends_cached_rows(srv, backend):
    """generate(force_refresh=True) sends every row even when all are cached."""
    df = pd.DataFrame({"prompt": ["f0", "f1", "f2"]})
    gen(df, "prompt", backend=backend)
    srv.reset_counts()
    details = gen(df, "prompt", backend=backend, force_refresh=True, details=True)
    assert srv.requests_total == 3
    assert not details["cached"].any()


def test_rerun_with_other_call_parameters_is_not_served_from_cache(srv, backend):
    """A cached row is reused only by a call with the same model, temperature, max_tokens, extra."""
    df = pd.DataFrame({"prompt": ["s0", "s1"]})
    calls = [{}, {"model": "mock-model-large"}, {"temperature": 0.5}, {"max_tokens": 40},
             {"extra": {"top_p": 0.5}}]
    for params in calls:
        srv.reset_counts()
        out = gen(df, "prompt", backend=backend, **params)
        assert srv.requests_total == 2, params
        model = params.get("model", "mock-model")
        assert out.tolist() == [echo("s0", model), echo("s1", model)]
    for params in calls:
        srv.reset_counts()
        details = gen(df, "prompt", backend=backend, details=True, **params)
        assert srv.requests_total == 0 and details["cached"].all(), params
        assert details["model"].tolist() == [params.get("model", "mock-model")] * 2


class SpyBackend(OpenAIMinimaLlm):
    """Records what the accessor hands to run_batched."""

    def __init__(self, config) -> None:
        super().__init__(config)
        self.batches = []

    def run_batched(self, requests, **kwargs):
        self.batches.append(([r.messages[-1]["content"] for r in requests],
                             kwargs.get("cached_rows", 0)))
        return super().run_batched(requests, **kwargs)


class NoLookupBackend:
    """A backend with run_batched but neither lookup() nor the cached_rows keyword."""

    def __init__(self, inner: OpenAIMinimaLlm) -> None:
        self.inner = inner
        self.config = inner.config
        self.sent = []

    async def run_batched(self, requests, *, force_refresh, progress, draw_in_loop):
        self.sent.append(len(requests))
        return await self.inner.run_batched(requests, force_refresh=force_refresh,
                                            progress=progress, draw_in_loop=draw_in_loop)


def test_only_misses_reach_run_batched(srv, tmp_path):
    """A backend with lookup() gets only the uncached rows, and the cached count beside them."""
    config = MinimaLlmConfig(base_url=srv.base_url, model="mock-model", rpm=0,
                             cache_dir=str(tmp_path))
    llm = SpyBackend(config)
    try:
        gen(pd.DataFrame({"prompt": ["a", "b", "c"]}), "prompt", backend=llm)
        out = gen(pd.DataFrame({"prompt": ["a", "new", "b", None, "c"]}), "prompt", backend=llm)
        gen(pd.DataFrame({"prompt": ["a", "b"]}), "prompt", backend=llm, details=True)
    finally:
        close_backend(llm)
    assert llm.batches[1:] == [(["new"], 3), ([], 2)]
    assert out.tolist()[:3] == [echo("a"), echo("new"), echo("b")]


def test_backend_without_lookup_still_answers_everything(srv, backend):
    """A backend lacking lookup() gets every row and no cached_rows keyword; results are right."""
    plain = NoLookupBackend(backend)
    df = pd.DataFrame({"prompt": ["p", "q", None, "p"]})
    gen(df, "prompt", backend=plain)
    out = gen(df, "prompt", backend=plain)
    assert plain.sent == [3, 3]
    assert out.tolist()[:2] == [echo("p"), echo("q")] and pd.isna(out.tolist()[2])
    assert srv.requests_total == 2  # the second call was answered by run_batched's own cache read


def test_details_rerun_shows_stored_fields_of_cached_rows(srv, backend):
    """details=True marks cached rows with attempts 0 and their stored tokens; new rows are sent."""
    cached = [f"old {i}" for i in range(10)]
    first = gen(pd.DataFrame({"prompt": cached}), "prompt", backend=backend, details=True)
    first.index = cached
    srv.reset_counts()
    df = _mixed_frame(cached, [f"new {i}" for i in range(5)])
    details = gen(df, "prompt", backend=backend, details=True)
    assert srv.requests_total == 5
    assert details.index.equals(df.index)
    was_cached = df["prompt"].isin(cached).tolist()
    assert details["cached"].tolist() == was_cached
    assert details["text"].tolist() == [echo(p) for p in df["prompt"]]
    for label, prompt in df["prompt"].items():
        row = details.loc[label]
        if prompt in cached:
            stored = first.loc[prompt]
            assert row["attempts"] == 0
            for column in ("input_tokens", "output_tokens", "finish_reason", "latency_s", "model"):
                assert row[column] == stored[column], column
        else:
            assert row["attempts"] == 1 and row["input_tokens"] > 0
    assert details["error"].isna().all()


def test_progress_counts_looked_up_rows_as_cached(backend):
    """Progress counts rows answered by lookup: total and done include them, cached counts them."""
    gen(pd.DataFrame({"prompt": ["a", "b", "c"]}), "prompt", backend=backend)
    df = pd.DataFrame({"prompt": ["a", "new1", "b", "new2", "c"]})
    sink = RecordingSink()
    gen(df, "prompt", backend=backend, progress=sink)
    last = sink.snapshots[-1]
    assert (last.total, last.done, last.cached) == (5, 5, 3)
    assert sink.closed == ["done"]
    again = RecordingSink()
    out = gen(df, "prompt", backend=backend, progress=again)
    last = again.snapshots[-1]
    assert (last.total, last.done, last.cached) == (5, 5, 5)
    assert again.closed == ["done"]
    assert out.tolist() == [echo(p) for p in df["prompt"]]


def test_batch_aborted_partial_has_stored_fields_after_text_only_lookup(srv, tmp_path):
    """exc.partial of a text-only call shows cached rows with their stored tokens, not <NA>."""
    llm = make_backend(srv, tmp_path, batch=BatchConfig(num_workers=1, max_failures=1))
    try:
        first = gen(pd.DataFrame({"prompt": ["ok0", "ok1"]}, index=["ok0", "ok1"]), "prompt",
                    backend=llm, details=True)
        srv.script("bad1", ["400"])
        srv.script("bad2", ["400"])
        df = pd.DataFrame({"prompt": ["ok0", "bad1", "ok1", "bad2", "later"]}, index=list("vwxyz"))
        with pytest.raises(BatchAborted) as info:
            gen(df, "prompt", backend=llm)
    finally:
        close_backend(llm)
    partial = info.value.partial
    assert partial.index.tolist() == list("vwxyz")
    for label, prompt in (("v", "ok0"), ("x", "ok1")):
        row = partial.loc[label]
        assert row["text"] == echo(prompt) and bool(row["cached"]) and row["attempts"] == 0
        assert row["input_tokens"] == first.loc[prompt, "input_tokens"]
        assert row["output_tokens"] == first.loc[prompt, "output_tokens"]
    assert partial.loc[["w", "y"], "error"].str.startswith("ClientError").tolist() == [True, True]
    assert partial.loc["z"].isna().all()  # never ran
    assert gc.isenabled()


# -- the garbage collector -------------------------------------------------------------------------


def test_gc_state_restored_after_generate(backend):
    """generate() leaves the collector on if it was on and off if the user turned it off."""
    assert gc.isenabled()
    df = pd.DataFrame({"prompt": ["g1", "g2"]})
    sink = RecordingSink()
    gen(df, "prompt", backend=backend, progress=sink)
    assert gc.isenabled()
    assert sink.gc_enabled and all(sink.gc_enabled)  # never paused during the batch
    gc.disable()
    try:
        gen(df, "prompt", backend=backend)
        gen(df, "prompt", backend=backend, details=True)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_gc_enabled_again_after_generate_raises(backend):
    """A call that fails while slots are built leaves the collector on."""
    df = pd.DataFrame({"prompt": ["ok", 42]}, index=["a", "b"])
    with pytest.raises(TypeError, match=r"row 'b'"):
        gen(df, "prompt", backend=backend)
    assert gc.isenabled()
    with pytest.raises(TypeError, match=r"row 'b'"):
        df["prompt"].minima.generate(backend=backend, progress=False)
    assert gc.isenabled()
    with pytest.raises(KeyError, match="not a column"):
        gen(df, "promt", backend=backend)
    assert gc.isenabled()


# -- agenerate ------------------------------------------------------------------------------------


def test_agenerate_matches_generate_on_mixed_frame(srv, tmp_path):
    """agenerate in asyncio.run gives generate's result for a frame of cached and new prompts."""
    df = _mixed_frame(["c0", "c1", "c2", "c3"], ["n0", "n1"])
    sync_llm, async_llm = make_backend(srv, tmp_path / "s"), make_backend(srv, tmp_path / "a")
    try:
        for llm in (sync_llm, async_llm):
            gen(pd.DataFrame({"prompt": ["c0", "c1", "c2", "c3"]}), "prompt", backend=llm)
        srv.reset_counts()
        expected = gen(df, "prompt", backend=sync_llm)
        expected_details = gen(df, "prompt", backend=sync_llm, details=True)
        sent_sync = srv.requests_total

        async def main():
            try:
                text = await df.minima.agenerate("prompt", backend=async_llm, progress=False)
                details = await df.minima.agenerate("prompt", backend=async_llm, progress=False,
                                                    details=True)
                return text, details
            finally:
                await async_llm.aclose()

        srv.reset_counts()
        text, details = asyncio.run(main())
        assert srv.requests_total == sent_sync == 2
    finally:
        close_backend(sync_llm)
        close_backend(async_llm)
    assert expected.tolist() == [echo(p) for p in df["prompt"]]
    pd.testing.assert_series_equal(text, expected)
    same = ["text", "cached", "error", "finish_reason", "input_tokens", "output_tokens",
            "attempts", "model"]
    pd.testing.assert_frame_equal(details[same], expected_details[same])


def test_stored_params_spell_each_request_field_as_sent(srv, tmp_path):
    """The params column keeps temperature/max_tokens as sent: True and 1, 0.5 and None stay apart."""
    llm = make_backend(srv, tmp_path / "cache")
    fields = [(True, None), (1, None), (0.5, 16), (None, None), (0.5, 16)]
    requests = [MinimaLlmRequest(request_id=f"r{i}", messages=[{"role": "user", "content": f"p{i}"}],
                                 temperature=t, max_tokens=m) for i, (t, m) in enumerate(fields)]
    try:
        run_sync(llm.run_batched(requests, progress=False))
        llm.cache.flush()
        rows = {row.messages[0]["content"]: row.params for chunk in llm.cache.iter_rows() for row in chunk}
    finally:
        close_backend(llm)
    for i, (t, m) in enumerate(fields):
        assert rows[f"p{i}"] == {"temperature": t, "max_tokens": m, "extra": None}
        assert type(rows[f"p{i}"]["temperature"]) is type(t)


# -- lookup_keyed and looked_up_keys: a first pass keys and looks each row up once -----------------


def test_lookup_keyed_gives_each_prompt_its_cache_key(srv, tmp_path):
    """lookup_keyed answers as lookup does, with the key each prompt was looked up under."""
    llm = make_backend(srv, tmp_path / "c")
    no_cache = make_backend(srv, None)
    refresh = make_backend(srv, tmp_path / "c", force_refresh=True)
    try:
        batch(llm, requests_for(["kept"], temperature=0.5))
        prompts = [msgs("kept"), None, msgs("new")]
        found, keys = llm.lookup_keyed(prompts, temperature=0.5, text_only=True)
        assert found == llm.lookup(prompts, temperature=0.5, text_only=True) == [echo("kept"), None, None]
        assert keys == [cache_key("mock-model", msgs("kept"), 0.5, None, None)[0], None,
                        cache_key("mock-model", msgs("new"), 0.5, None, None)[0]]
        assert no_cache.lookup_keyed(prompts) == ([None, None, None], None)  # nothing looked up
        assert refresh.lookup_keyed(prompts) == ([None, None, None], None)
    finally:
        for backend in (llm, no_cache, refresh):
            close_backend(backend)


def test_first_pass_sends_its_misses_under_the_looked_up_keys(srv, tmp_path):
    """The accessor hands run_batched the keys its lookup made: each miss is counted once,
    duplicates are sent once, and every answer is stored under its key (a re-run sends nothing)."""
    config = MinimaLlmConfig(base_url=srv.base_url, model="mock-model", rpm=0, cache_dir=str(tmp_path))
    seen_keys = []

    class KeySpy(OpenAIMinimaLlm):
        def run_batched(self, requests, **kwargs):
            seen_keys.append(kwargs.get("looked_up_keys"))
            return super().run_batched(requests, **kwargs)

    llm = KeySpy(config)
    try:
        gen(pd.DataFrame({"prompt": ["seen"]}), "prompt", backend=llm)
        srv.reset_counts()
        before = llm.cache_stats()
        frame = pd.DataFrame({"prompt": ["seen", "x", None, "y", "x"]})
        out = gen(frame, "prompt", backend=llm, temperature=0.0)
        assert srv.requests_total == 3  # seen (other temperature), x once, y
        assert seen_keys[-1] == [cache_key("mock-model", msgs(p), 0.0, None, None)[0]
                                 for p in ["seen", "x", "y", "x"]]
        stats = llm.cache_stats()
        assert stats["misses"] - before["misses"] == 3  # three distinct prompts sent, each counted once
        assert out.tolist()[:2] == [echo("seen"), echo("x")]
        srv.reset_counts()
        again = gen(frame, "prompt", backend=llm, temperature=0.0)
        assert srv.requests_total == 0 and again.tolist()[3] == echo("y")
        gen(frame, "prompt", backend=llm, force_refresh=True)
        assert seen_keys[-1] is None  # force refresh looks nothing up, so run_batched keys the rows
    finally:
        close_backend(llm)


def test_run_batched_refuses_looked_up_keys_that_do_not_match(backend):
    """A key list of another length is a programming error, said before anything is sent."""
    with pytest.raises(ValueError, match="one key per request"):
        batch(backend, requests_for(["a", "b"]), looked_up_keys=["only one"])
