"""LiteLLM and DSPy, unmodified, pointed at the proxy (nothing leaves 127.0.0.1)."""

from __future__ import annotations

import asyncio

import pytest

MESSAGES = [{"role": "user", "content": "Say hi."}]


def test_litellm_completion_plain_and_streaming(proxy, upstream, loopback_only):
    import litellm

    answer = litellm.completion(model="openai/mock-model", api_base=proxy.base_url, api_key="x",
                                messages=MESSAGES)
    assert answer.choices[0].message.content == "[mock-model] echo: Say hi."
    assert answer.usage.total_tokens > 0
    chunks = list(litellm.completion(model="openai/mock-model", api_base=proxy.base_url,
                                     api_key="x", messages=MESSAGES, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "[mock-model] echo: Say hi."
    again = asyncio.run(litellm.acompletion(model="openai/mock-model", api_base=proxy.base_url,
                                            api_key="x", messages=MESSAGES, max_tokens=64))
    assert again.choices[0].message.content == "[mock-model] echo: Say hi."
    # Plain, streamed: one key; max_tokens=64 is another request.
    assert upstream.requests_total == 2
    assert proxy.metrics.hits == 1


def test_litellm_sees_upstream_errors_without_retrying_them(proxy, upstream, loopback_only):
    import litellm

    upstream.script("refused", ["400"])
    with pytest.raises(litellm.BadRequestError):
        litellm.completion(model="openai/mock-model", api_base=proxy.base_url, api_key="x",
                           messages=[{"role": "user", "content": "refused"}])
    assert upstream.requests_for("refused") == 1


def test_dspy_lm_through_the_proxy_shares_the_key_of_max_tokens(proxy, upstream, loopback_only):
    """dspy.LM sends max_completion_tokens; openai-python's max_tokens then hits its answer."""
    import dspy
    import openai

    lm = dspy.LM("openai/mock-model", api_base=proxy.base_url, api_key="x", cache=False,
                 num_retries=0, max_tokens=300)
    first = lm("Say hi.")
    assert first == ["[mock-model] echo: Say hi."]
    sent = upstream.last_request_json
    assert sent.get("max_tokens") == 300  # the engine's one spelling upstream
    client = openai.OpenAI(base_url=proxy.base_url, api_key="x", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="mock-model", messages=MESSAGES,
                                                           max_tokens=300)
    assert raw.headers["x-minima-cache"] == "hit"
    assert lm("Say hi.") == first
    assert upstream.requests_total == 1
