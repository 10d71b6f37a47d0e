"""Helper process for tests/test_cache.py: writes N distinct rows into a shared cache directory.

Usage: python _cache_writer_proc.py CACHE_DIR WORKER_ID N GO_FILE
Waits (at most 30 s) for GO_FILE to exist so that all workers open and write at the same time.
Exits 0 after a clean close; any exception prints a traceback and exits non-zero.
"""

from __future__ import annotations

import os
import sys
import time

from minima_nb.cache import CacheRow, PromptCache


def main(directory: str, worker: int, count: int, go_file: str) -> None:
    deadline = time.monotonic() + 30
    while not os.path.exists(go_file):
        if time.monotonic() > deadline:
            raise SystemExit("the go file never appeared")
        time.sleep(0.01)
    # Small batches make many transactions, so the processes contend for the write lock often.
    cache = PromptCache(directory, flush_interval_s=0.001, max_batch_rows=50)
    for i in range(count):
        key = f"w{worker}-{i}"
        cache.put(CacheRow(key, None, "m", [{"role": "user", "content": key}], {}, f"answer {key}"))
        if i % 500 == 0:
            cache.get(key)  # reads interleaved with other processes' writes
    cache.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
