"""Honest counters and the live preview under the notebook bar.

Rates count only requests actually sent and appear once a second of data is there; the final
line has real tokens/s or none; the preview shows the last answers and failures, one line
each, redrawn at most a few times a second (measured under a fast mock, over a real socket).
"""

from __future__ import annotations

import time

import pandas as pd
from _mock_backend import close_backend, make_backend
from test_progress import FakeClock, notebook_sink, text_sink
from tqdm.notebook import tqdm as notebook_tqdm

from minima_nb.notebook.preview import PREVIEW_INTERVAL_S, one_line
from minima_nb.notebook.progress import NotebookSink
from minima_nb.types import BatchSnapshot


def test_request_rate_waits_for_a_second_of_sent_requests():
    sink, clock = notebook_sink(min_interval_s=0)
    sink.update(BatchSnapshot(total=500, done=5, sent=5, elapsed_s=0.1))
    sink.draw()
    sink.update(BatchSnapshot(total=500, done=50, sent=50, elapsed_s=0.6))
    clock.advance(0.5)
    sink.draw()
    assert "req/min" not in sink.bar.final_text() and "50 requests" in sink.bar.final_text()
    sink.update(BatchSnapshot(total=500, done=155, sent=155, elapsed_s=1.6, output_tokens=300))
    clock.advance(1.0)
    sink.draw()
    text = sink.bar.final_text()
    assert "6,000 req/min" in text  # (155 - 5) sent over the 1.5 s since the first sample
    assert "200 tok/s" in text


def test_a_cached_run_shows_no_requests_and_no_made_up_rates():
    sink, _ = notebook_sink()
    sink.update(BatchSnapshot(total=50, done=50, cached=50, sent=0, elapsed_s=0.004, rpm=37e6))
    sink.close("done")
    text = sink.bar.final_text()
    # the final line measures the whole (short) run: its rows/s, no request rate, no tok/s
    assert "cached 50, failed 0, 0 requests, 12,500 rows/s" in text
    assert "req/min" not in text and "tok/s" not in text


def test_the_final_line_has_real_tokens_per_second_and_rows_per_second():
    sink, _ = notebook_sink()
    sink.update(BatchSnapshot(total=100, done=100, sent=100, output_tokens=800, elapsed_s=2.0))
    sink.close("done")
    text = sink.bar.final_text()
    assert "100 requests, 400 tok/s, 50 rows/s" in text


def test_without_output_tokens_the_final_line_leaves_tok_s_out():
    sink, _ = notebook_sink()
    sink.update(BatchSnapshot(total=10, done=10, sent=10, elapsed_s=2.0))
    sink.close("done")
    assert "tok/s" not in sink.bar.final_text()


def test_heartbeat_prints_the_last_failures_reason():
    sink, clock, stream = text_sink(heartbeat_s=1.0)
    sink.update(BatchSnapshot(total=10, done=2, failed=1,
                              last_error="HTTP 400: the server rejected the request"))
    clock.advance(2)
    sink.draw()
    assert "last failure: HTTP 400: the server rejected the request" in stream.getvalue()


def _widget_sink(clock=None) -> NotebookSink:
    sink = NotebookSink(clock=clock or FakeClock(), tqdm_cls=notebook_tqdm, min_interval_s=0)
    sink.configure(prompt_of=lambda rid: f"prompt of {rid}")
    return sink


def test_preview_shows_last_answers_and_failures_one_line_each():
    sink = _widget_sink()
    sink.update(BatchSnapshot(
        total=10, done=3, failed=1,
        recent_answers=(("row-0", "first\nanswer"), ("row-1", "x" * 500)),
        recent_failures=(("row-2", "SchemaMismatch: the answer is not JSON"),)))
    sink.draw()
    value = sink.preview.widget.value
    assert "✓ prompt of row-0 → first answer" in value
    assert "x" * 100 not in value and one_line("x" * 500).endswith("…")
    assert "✗ prompt of row-2 → SchemaMismatch: the answer is not JSON" in value


def test_preview_redraws_at_most_every_interval_and_once_more_at_the_end():
    clock = FakeClock()
    sink = _widget_sink(clock)
    for i in range(200):  # 200 snapshots within 0.2 s
        sink.update(BatchSnapshot(total=1000, done=i + 1, recent_answers=((f"row-{i}", f"a{i}"),)))
        sink.draw()
        clock.advance(0.001)
    assert sink.preview.draws == 1
    sink.update(BatchSnapshot(total=1000, done=500, failed=1,
                              recent_failures=(("row-9", "HTTP 400: bad"),)))
    sink.close("aborted")  # a failed batch keeps its last failures on screen
    assert sink.preview.draws == 2 and "HTTP 400: bad" in sink.preview.widget.value


def test_preview_redraw_rate_is_bounded_under_a_fast_mock(srv, tmp_path):
    backend = make_backend(srv, tmp_path / "cache", batch={"num_workers": 32})
    try:
        sink = NotebookSink(tqdm_cls=notebook_tqdm)
        df = pd.DataFrame({"prompt": [f"fast question {i}" for i in range(3000)]})
        started = time.monotonic()
        df.minima.generate("prompt", backend=backend, progress=sink)
        elapsed = time.monotonic() - started
    finally:
        close_backend(backend)
    assert sink.preview.draws >= 1
    assert sink.preview.draws <= elapsed / PREVIEW_INTERVAL_S + 2  # not one redraw per answer
    assert "✓ fast question" in sink.preview.widget.value


def test_preview_false_turns_it_off(srv, tmp_path):
    backend = make_backend(srv, tmp_path / "cache")
    try:
        sink = NotebookSink(tqdm_cls=notebook_tqdm)
        pd.DataFrame({"prompt": ["a", "b"]}).minima.generate(
            "prompt", backend=backend, progress=sink, preview=False)
    finally:
        close_backend(backend)
    assert sink.preview is None and sink.bar.n == 2


def test_the_widget_shows_spend_against_the_cap(srv, tmp_path):
    backend = make_backend(srv, tmp_path / "cache")
    try:
        sink = NotebookSink(tqdm_cls=notebook_tqdm)
        pd.DataFrame({"prompt": ["a", "b"]}).minima.generate(
            "prompt", backend=backend, progress=sink, max_cost=1.0,
            price={"input": 0.15, "output": 0.60})
    finally:
        close_backend(backend)
    shown = sink.bar.container.children[2].value.replace("\u2007", " ")  # tqdm's figure spaces
    assert "spent $0.0000 of $1.00" in shown


def test_a_cached_rerun_ends_with_zero_requests_and_its_rows_per_second(srv, tmp_path, capsys):
    """Over a real socket and cache: the re-run's final line (widget and text) is measured, not made up."""
    backend = make_backend(srv, tmp_path / "cache")
    try:
        df = pd.DataFrame({"prompt": [f"cached question {i}" for i in range(50)]})
        df.minima.generate("prompt", backend=backend, progress=False)
        srv.reset_counts()
        sink = NotebookSink(tqdm_cls=notebook_tqdm)
        df.minima.generate("prompt", backend=backend, progress=sink)
        df.minima.generate("prompt", backend=backend, progress="text")
    finally:
        close_backend(backend)
    assert srv.requests_total == 0
    final = sink.bar.container.children[2].value.replace("\u2007", " ")
    assert "cached 50, failed 0, 0 requests, " in final and final.endswith(" rows/s]")
    assert "tok/s" not in final and "req/min" not in final
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("minima: done 50/50 in ") and " rows/s (50 cached, 0 failed, 0 sent" in line


def test_a_typed_call_previews_its_fields_not_the_raw_json(srv, tmp_path):
    backend = make_backend(srv, tmp_path / "cache")
    schema = {"type": "object", "properties": {"label": {"type": "string"}, "score": {"type": "integer"}},
              "required": ["label", "score"]}
    try:
        sink = NotebookSink(tqdm_cls=notebook_tqdm)
        pd.DataFrame({"prompt": ["grade a", "grade b"]}).minima.generate(
            "prompt", backend=backend, progress=sink, schema=schema)
    finally:
        close_backend(backend)
    value = sink.preview.widget.value
    assert "✓ grade a → label: " in value and " · score: " in value and "{" not in value
