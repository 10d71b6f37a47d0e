"""One client process of the multi-process proxy test: asks its prompts at once with
openai-python (no client retries) and prints one JSON line of what came back."""

from __future__ import annotations

import asyncio
import json
import sys

import openai


async def ask(base_url: str, prompts: list[str]) -> list[dict]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="worker", max_retries=0, timeout=60)

    async def one(prompt: str) -> dict:
        try:
            raw = await client.chat.completions.with_raw_response.create(
                model="mock-model", messages=[{"role": "user", "content": prompt}])
        except openai.APIStatusError as exc:
            return {"prompt": prompt, "status": exc.status_code, "text": None}
        except openai.APIError as exc:
            return {"prompt": prompt, "status": None, "text": None, "error": str(exc)}
        return {"prompt": prompt, "status": raw.status_code,
                "text": raw.parse().choices[0].message.content,
                "cache": raw.headers.get("x-minima-cache")}

    try:
        return await asyncio.gather(*(one(p) for p in prompts))
    finally:
        await client.close()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(ask(sys.argv[1], sys.argv[2:]))), flush=True)
