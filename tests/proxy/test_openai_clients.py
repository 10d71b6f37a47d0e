"""openai-python, sync and async, through the caching proxy: plain calls, raw responses,
streaming (iteration and the ``.stream()`` helper), and the cache key shared with the notebook."""

from __future__ import annotations

import asyncio
import sqlite3

import openai
import pandas as pd
import pytest

from minima_nb import MinimaLlmConfig, OpenAIMinimaLlm, ProxyServer
from minima_nb.engine.sync import run_sync

from .conftest import upstream_config

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def client_of(proxy: ProxyServer, **options) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base_url, api_key="client-key", max_retries=0, **options)


def test_a_miss_then_a_hit_keep_the_upstream_id_model_and_usage(proxy, upstream):
    client = client_of(proxy)
    first = client.chat.completions.with_raw_response.create(model="mock-model", messages=MESSAGES)
    second = client.chat.completions.with_raw_response.create(model="mock-model", messages=MESSAGES)

    assert first.headers["x-minima-cache"] == "miss"
    assert second.headers["x-minima-cache"] == "hit"
    a, b = first.parse(), second.parse()
    assert a.choices[0].message.content == "[mock-model] echo: What is the capital of France?"
    assert b.choices[0].message.content == a.choices[0].message.content
    assert a.id.startswith("chatcmpl-mock-") and b.id == a.id  # the upstream's id, replayed
    assert b.model == a.model == "mock-model"
    assert b.usage is not None and b.usage.total_tokens == a.usage.total_tokens > 0
    assert a.choices[0].finish_reason == b.choices[0].finish_reason == "stop"
    assert upstream.requests_total == 1
    assert proxy.metrics.snapshot() | {"in_flight": 0} == {
        "requests": 2, "hits": 1, "misses": 1, "errors": 0, "in_flight": 0,
        "upstream_requests": 1, "upstream_429": 0}


def test_the_client_authorization_never_goes_upstream(proxy, upstream):
    client_of(proxy).chat.completions.create(model="mock-model", messages=MESSAGES)
    sent = upstream.last_request_headers
    assert sent["Authorization"] == f"Bearer {upstream_config(upstream, '.').api_key}"
    assert "client-key" not in repr(sent)
    assert not any(name.lower().startswith("x-stainless") for name in sent)


def test_streaming_iteration_gives_the_text_and_the_usage_chunk(proxy, upstream):
    client = client_of(proxy)
    for expected in ("miss", "hit"):
        raw = client.chat.completions.with_raw_response.create(
            model="mock-model", messages=MESSAGES, stream=True,
            stream_options={"include_usage": True})
        assert raw.headers["x-minima-cache"] == expected
        assert raw.headers["content-type"].startswith("text/event-stream")
        chunks = list(raw.parse())
        assert len(chunks) == 2
        assert chunks[0].choices[0].delta.role == "assistant"
        assert chunks[0].choices[0].delta.content == "[mock-model] echo: What is the capital of France?"
        assert chunks[0].choices[0].finish_reason == "stop"
        assert chunks[0].id.startswith("chatcmpl-mock-") and chunks[0].model == "mock-model"
        assert chunks[1].choices == [] and chunks[1].usage.total_tokens > 0
    assert upstream.requests_total == 1


def test_streaming_without_include_usage_sends_no_usage_chunk(proxy):
    chunks = list(client_of(proxy).chat.completions.create(
        model="mock-model", messages=MESSAGES, stream=True))
    assert len(chunks) == 1 and chunks[0].usage is None
    assert chunks[0].choices[0].delta.content.endswith("capital of France?")


def test_the_stream_helper_gets_the_final_completion(proxy):
    client = client_of(proxy)
    for _ in range(2):  # a miss, then a hit
        with client.chat.completions.stream(model="mock-model", messages=MESSAGES) as stream:
            deltas = [event.delta for event in stream if event.type == "content.delta"]
            final = stream.get_final_completion()
        assert "".join(deltas) == final.choices[0].message.content
        assert final.choices[0].message.content.endswith("capital of France?")
        assert final.choices[0].finish_reason == "stop"


def test_async_client_plain_streaming_and_raw(proxy, upstream):
    async def main() -> None:
        client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key="x", max_retries=0)
        prompts = [[{"role": "user", "content": f"question {i}"}] for i in range(20)]
        answers = await asyncio.gather(*(
            client.chat.completions.create(model="mock-model", messages=m) for m in prompts))
        assert [a.choices[0].message.content for a in answers] == [
            f"[mock-model] echo: question {i}" for i in range(20)]
        raw = await client.chat.completions.with_raw_response.create(model="mock-model",
                                                                     messages=prompts[3])
        assert raw.headers["x-minima-cache"] == "hit"
        stream = await client.chat.completions.create(model="mock-model", messages=prompts[5],
                                                      stream=True)
        texts = [chunk.choices[0].delta.content async for chunk in stream]
        assert texts == ["[mock-model] echo: question 5"]
        async with client.chat.completions.stream(model="mock-model", messages=prompts[7]) as s:
            final = await s.get_final_completion()
        assert final.choices[0].message.content == "[mock-model] echo: question 7"
        await client.close()

    asyncio.run(main())
    assert upstream.requests_total == 20


def test_a_notebook_answer_is_a_proxy_hit(upstream, cache_dir):
    """df.minima.generate and openai-python through the proxy share cache keys."""
    config = upstream_config(upstream, cache_dir)
    backend = OpenAIMinimaLlm(config)
    df = pd.DataFrame({"q": ["What is 2+2?", "Name a colour."]})
    try:
        plain = df.minima.generate("q", backend=backend, progress=False)
        tuned = df.minima.generate("q", backend=backend, progress=False, system="Be brief.",
                                   temperature=0.2, max_tokens=50, extra={"top_p": 0.9})
    finally:
        run_sync(backend.aclose())
        backend.close()
    sent = upstream.requests_total
    assert sent == 4

    with ProxyServer(config, port=0) as proxy:
        client = client_of(proxy)
        got = client.chat.completions.with_raw_response.create(
            model="mock-model", messages=[{"role": "user", "content": "What is 2+2?"}])
        assert got.headers["x-minima-cache"] == "hit"
        assert got.parse().choices[0].message.content == plain[0]
        # DSPy's spelling of max_tokens, streaming, a user and metadata: still the same key.
        stream = client.chat.completions.with_raw_response.create(
            model="mock-model", stream=True, stream_options={"include_usage": True},
            user="someone", metadata={"run": "7"}, temperature=0.2, max_completion_tokens=50,
            top_p=0.9, messages=[{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "Name a colour."}])
        assert stream.headers["x-minima-cache"] == "hit"
        assert next(iter(stream.parse())).choices[0].delta.content == tuned[1]
    assert upstream.requests_total == sent


def test_no_cache_in_the_body_or_the_header_forces_a_refresh(proxy, upstream):
    client = client_of(proxy)
    client.chat.completions.create(model="mock-model", messages=MESSAGES)
    body = client.chat.completions.with_raw_response.create(
        model="mock-model", messages=MESSAGES, extra_body={"cache": {"no-cache": True}})
    header = client.chat.completions.with_raw_response.create(
        model="mock-model", messages=MESSAGES, extra_headers={"Cache-Control": "no-cache"})
    again = client.chat.completions.with_raw_response.create(model="mock-model", messages=MESSAGES)
    assert [r.headers["x-minima-cache"] for r in (body, header, again)] == ["miss", "miss", "hit"]
    assert upstream.requests_for(MESSAGES[0]["content"]) == 3
    # The refreshed answer replaced the cached one.
    assert again.parse().choices[0].message.content == header.parse().choices[0].message.content


def test_the_client_model_is_used_unless_forced(upstream, cache_dir):
    config = upstream_config(upstream, cache_dir)
    with ProxyServer(config, port=0) as proxy:
        answer = client_of(proxy).chat.completions.create(model="mock-model-large", messages=MESSAGES)
    assert answer.model == "mock-model-large"
    with ProxyServer(config, port=0, force_model=True) as proxy:
        answer = client_of(proxy).chat.completions.create(model="gpt-anything", messages=MESSAGES)
        assert answer.model == "mock-model"
        listed = client_of(proxy).models.list()
    assert [m.id for m in listed.data] == ["mock-model"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/chat/completions"])
def test_both_chat_paths_answer(proxy, path):
    client = openai.OpenAI(base_url=proxy.url + path.removesuffix("/chat/completions"),
                           api_key="x", max_retries=0)
    assert client.chat.completions.create(model="mock-model", messages=MESSAGES).choices


def test_a_graceful_stop_commits_the_cache(upstream, cache_dir):
    config = upstream_config(upstream, cache_dir)
    with ProxyServer(config, port=0) as proxy:
        client_of(proxy).chat.completions.create(model="mock-model", messages=MESSAGES)
    with sqlite3.connect(cache_dir / "minima_llm.db") as db:
        assert db.execute("SELECT count(*) FROM responses").fetchone() == (1,)


def test_async_with_and_run(upstream, cache_dir):
    config = upstream_config(upstream, cache_dir)

    async def main() -> None:
        async with ProxyServer(config, port=0) as proxy:
            client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key="x", max_retries=0)
            assert (await client.chat.completions.create(model="m", messages=MESSAGES)).choices
            await client.close()
        served = ProxyServer(config, port=0)
        task = asyncio.create_task(served.run())
        for _ in range(200):  # bounded: until it listens
            if served.backend is not None:
                break
            await asyncio.sleep(0.01)
        client = openai.AsyncOpenAI(base_url=served.base_url, api_key="x", max_retries=0)
        answer = await client.chat.completions.create(model="m", messages=MESSAGES)
        assert answer.choices[0].message.content.startswith("[m] echo")
        await client.close()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert served.backend is None

    asyncio.run(main())


def test_minima_llm_spelling_positional_config_and_verbose(upstream, cache_dir, capsys):
    with ProxyServer(upstream_config(upstream, cache_dir), port=0, verbose=True) as proxy:
        for _ in range(2):
            client_of(proxy).chat.completions.create(model="mock-model", messages=MESSAGES)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines] == ["miss", "hit"]


def test_models_are_the_upstreams_list_else_the_configured_model(proxy, cache_dir):
    assert [m.id for m in client_of(proxy).models.list().data] == ["mock-model", "mock-model-large"]
    # Nothing listening upstream: the configured model, without an error.
    config = MinimaLlmConfig(base_url="http://127.0.0.1:9/v1", model="mock-model", api_key="sk-x",
                             rpm=0, cache_dir=str(cache_dir))
    with ProxyServer(config, port=0) as down:
        assert [m.id for m in client_of(down).models.list().data] == ["mock-model"]
