"""The engine: sends one chat request, and a batch of them (internal; use ``minima_nb``'s names).

From the wire up: :mod:`.transport` (the HTTP seam), :mod:`.wire` (the chat-completions format),
:mod:`.limits`, :mod:`.window`, :mod:`.pacer` and :mod:`.adaptive` (rate-limit headers, pacing,
cooldown, the rate learned from 429s), :mod:`.retry`,
:mod:`.call` (one request, paced and retried), :mod:`.meter` and :mod:`.progress` (a batch's
counters and where they are shown), :mod:`.pool` (the worker pool), :mod:`.loop` and
:mod:`.sync` (the private event loop and ``run_sync``), and :mod:`.backend` (``OpenAIMinimaLlm``,
the one place where the engine meets the prompt cache).
"""
