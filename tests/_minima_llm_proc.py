"""Helper process for tests/test_legacy_cache.py: the real minima-llm 0.2.8 answering a batch.

Usage: python _minima_llm_proc.py SPEC_JSON
SPEC_JSON holds ``base_url``, ``model``, ``cache_dir``, ``requests`` (a list of
``{"id", "prompt", "temperature"?, "max_tokens"?, "model"?}``) and optionally
``model_synonyms`` / ``cache_lookup_dirs``. It prints one JSON line: a list of
``{"id", "text", "cached", "cache_source"}`` in request order (``"error"`` for a failure).
It runs in its own process so minima-llm's module state, prints and threads stay out of pytest.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import sys

from minima_llm import MinimaLlmConfig, MinimaLlmRequest, OpenAIMinimaLlm


async def answer(spec: dict) -> list[dict]:
    config = MinimaLlmConfig(
        base_url=spec["base_url"], model=spec["model"], api_key="sk-test", cache_dir=spec["cache_dir"],
        rpm=0, max_attempts=2, timeout_s=10.0,
        model_synonyms=tuple(spec.get("model_synonyms", ())),
        cache_lookup_dirs=tuple(spec.get("cache_lookup_dirs", ())),
    )
    backend = OpenAIMinimaLlm(config)
    requests = [
        MinimaLlmRequest(request_id=r["id"], messages=[{"role": "user", "content": r["prompt"]}],
                         temperature=r.get("temperature"), max_tokens=r.get("max_tokens"), model=r.get("model"))
        for r in spec["requests"]
    ]
    try:
        results = await backend.run_batched(requests)
    finally:
        await backend.aclose()
    out = []
    for r in results:
        if hasattr(r, "text"):
            out.append({"id": r.request_id, "text": r.text, "cached": r.cached, "cache_source": r.cache_source})
        else:
            out.append({"id": r.request_id, "error": f"{r.error_type}: {r.message}"})
    return out


def main() -> None:
    spec = json.loads(sys.argv[1])
    chatter = io.StringIO()  # minima-llm prints its progress and settings; keep stdout for the answer
    with contextlib.redirect_stdout(chatter):
        out = asyncio.run(answer(spec))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
