"""Provider batch APIs (OpenAI-compatible ``/v1/files`` + ``/v1/batches``): whole prompt sets as
half-price offline jobs, resumable after a crash, never orphaning a billed batch.

:mod:`.state` (the SQLite state, written before every remote call), :mod:`.client` (the HTTP
calls), :mod:`.chunks` (JSONL input files), :mod:`.ingest` (outputs into the prompt cache),
:mod:`.job` (``BatchJob``), :mod:`.mode` (``backend.batch_mode``), :mod:`.manage` (the
predecessor's overview and cancel functions, ``batch_jobs()``). Public face: ``minima_nb.batch``.
"""
