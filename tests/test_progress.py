"""Progress sinks: heartbeat timing, rates, stall warnings, summaries, the tqdm bar, the chooser."""

from __future__ import annotations

import io
import threading

import pytest
from tqdm.std import tqdm as std_tqdm

from minima_nb.engine.progress import (
    NullSink,
    ProgressSink,
    TextSink,
    format_duration,
    make_sink,
    running_in_notebook,
)
from minima_nb.errors import ConfigError
from minima_nb.notebook.progress import NotebookSink
from minima_nb.types import BatchSnapshot


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingTqdm(std_tqdm):
    """A plain tqdm bar writing into a string buffer, remembering every refresh."""

    def __init__(self, *args, **kwargs) -> None:
        self.buffer = io.StringIO()
        self.refreshed_n: list[float] = []
        kwargs["file"] = self.buffer
        super().__init__(*args, **kwargs)

    def refresh(self, *args, **kwargs):
        self.refreshed_n.append(self.n)
        return super().refresh(*args, **kwargs)

    def final_text(self) -> str:
        return self.buffer.getvalue().split("\r")[-1]


def text_sink(**kwargs) -> tuple[TextSink, FakeClock, io.StringIO]:
    clock, stream = FakeClock(), io.StringIO()
    sink = TextSink(stream=stream, clock=clock, **kwargs)
    return sink, clock, stream


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_format_duration():
    """Durations read h:mm:ss, unknown ones '?'."""
    assert format_duration(12.4) == "0:00:12"
    assert format_duration(3723) == "1:02:03"
    assert format_duration(None) == "?"
    assert format_duration(float("inf")) == "?"


def test_heartbeat_waits_for_interval():
    """No heartbeat line before heartbeat_s has passed, one once it has."""
    sink, clock, stream = text_sink(heartbeat_s=10.0)
    sink.update(BatchSnapshot(total=500, done=100, cached=40, failed=2, eta_s=75.0))
    clock.advance(9.9)
    sink.draw()
    assert lines(stream) == []
    clock.advance(0.2)
    sink.draw()
    sink.draw()  # the next one is 10 s away again
    (line,) = lines(stream)
    assert "100/500 (20.0%)" in line
    assert "cached 40" in line and "failed 2" in line and "eta 0:01:15" in line


def test_heartbeat_rates_use_deltas_since_previous_line():
    """sent/s and recv/s are the sent/received increase since the previous heartbeat."""
    sink, clock, stream = text_sink(heartbeat_s=10.0)
    sink.update(BatchSnapshot(total=1000, done=10, sent=100, received=50))
    clock.advance(10)
    sink.draw()
    sink.update(BatchSnapshot(total=1000, done=20, sent=300, received=450))
    clock.advance(20)
    sink.draw()
    first, second = lines(stream)
    assert "sent 10.0/s, recv 5.0/s" in first
    assert "sent 10.0/s, recv 20.0/s" in second


def test_heartbeat_shows_tokens_latency_in_flight():
    """The heartbeat carries token totals, mean latency, retrying and in-flight counts."""
    sink, clock, stream = text_sink(heartbeat_s=1.0)
    sink.update(
        BatchSnapshot(
            total=10,
            done=1,
            retrying=3,
            in_flight=4,
            input_tokens=1234,
            output_tokens=5678,
            mean_latency_s=1.5,
        )
    )
    clock.advance(1)
    sink.draw()
    (line,) = lines(stream)
    assert "tokens 1,234 in / 5,678 out" in line
    assert "mean latency 1.50s" in line
    assert "retrying 3" in line and "in flight 4" in line


def test_stall_warning_once_per_episode():
    """A stall is reported once, and again only after progress resumed and stalled anew."""
    sink, clock, stream = text_sink(heartbeat_s=1e9, stall_s=300.0)

    def warnings() -> list[str]:
        return [line for line in lines(stream) if "WARNING" in line]

    sink.update(BatchSnapshot(total=10, done=2, in_flight=3, idle_s=299.0))
    sink.draw()
    assert warnings() == []
    sink.update(BatchSnapshot(total=10, done=2, in_flight=3, idle_s=301.0, last_error="boom"))
    sink.draw()
    sink.update(BatchSnapshot(total=10, done=2, in_flight=3, idle_s=330.0, last_error="boom"))
    sink.draw()
    assert len(warnings()) == 1
    assert "no completion for 301s" in warnings()[0]
    assert "in flight: 3" in warnings()[0] and "last error: boom" in warnings()[0]
    sink.update(BatchSnapshot(total=10, done=3, idle_s=0.5))  # progress resumed
    sink.draw()
    assert len(warnings()) == 1
    sink.update(BatchSnapshot(total=10, done=3, idle_s=300.0))
    sink.draw()
    assert len(warnings()) == 2


def test_stall_counts_time_since_last_snapshot():
    """A snapshot nobody replaced ages: the stall is noticed without new snapshots."""
    sink, clock, stream = text_sink(heartbeat_s=1e9, stall_s=300.0)
    sink.update(BatchSnapshot(total=10, done=2, idle_s=100.0))
    clock.advance(150)
    sink.draw()
    assert "WARNING" not in stream.getvalue()
    clock.advance(60)
    sink.draw()
    assert "no completion for 310s" in stream.getvalue()


def test_no_stall_warning_when_finished():
    """A finished batch waiting to be closed is not a stall."""
    sink, clock, stream = text_sink(heartbeat_s=1e9, stall_s=1.0)
    sink.update(BatchSnapshot(total=3, done=3, idle_s=50.0))
    sink.draw()
    assert "WARNING" not in stream.getvalue()


def test_summary_line_done():
    """close('done') prints one summary line with counts and tokens."""
    sink, clock, stream = text_sink()
    sink.update(
        BatchSnapshot(
            total=500,
            done=500,
            cached=480,
            failed=2,
            sent=20,
            input_tokens=1234,
            output_tokens=5678,
            elapsed_s=12.34,
        )
    )
    sink.close("done")
    assert lines(stream) == [
        "minima: done 500/500 in 12.3s, 41 rows/s (480 cached, 2 failed, 20 sent, 1,234 tokens in / 5,678 out)"
    ]


def test_summary_line_aborted_names_status_and_error():
    """close('aborted') says it was aborted, where, and the last error."""
    sink, clock, stream = text_sink(label="job")
    sink.update(BatchSnapshot(total=500, done=120, failed=25, elapsed_s=75.0, last_error="401"))
    sink.close("aborted")
    (line,) = lines(stream)
    assert line.startswith("job: aborted at 120/500 after 0:01:15, 2 rows/s (")
    assert line.endswith("last error: 401")


def test_text_close_is_idempotent_and_final():
    """A second close prints nothing, and updates or draws after close are ignored."""
    sink, clock, stream = text_sink(heartbeat_s=1.0)
    sink.update(BatchSnapshot(total=5, done=1))
    sink.close("interrupted")
    sink.close("done")
    sink.update(BatchSnapshot(total=5, done=2))
    clock.advance(5)
    sink.draw()
    (line,) = lines(stream)
    assert line.startswith("minima: interrupted at 1/5")


def test_text_update_from_other_thread_while_drawing():
    """update() from another thread while draw() runs here neither crashes nor blocks."""
    sink, clock, stream = text_sink(heartbeat_s=0.0, stall_s=1e9)
    count = 2000
    writer = threading.Thread(
        target=lambda: [sink.update(BatchSnapshot(total=count, done=i)) for i in range(count)]
    )
    writer.start()
    for _ in range(count):
        clock.advance(0.01)
        sink.draw()
    writer.join(timeout=10)
    assert not writer.is_alive()
    sink.update(BatchSnapshot(total=count, done=count))
    sink.close()
    assert lines(stream)[-1].startswith(f"minima: done {count:,}/{count:,}")


def notebook_sink(**kwargs) -> tuple[NotebookSink, FakeClock]:
    clock = FakeClock()
    return NotebookSink(clock=clock, tqdm_cls=RecordingTqdm, **kwargs), clock


def test_bar_tracks_latest_snapshot():
    """The bar's n and total follow the newest snapshot; the postfix shows the live figures."""
    sink, clock = notebook_sink()
    sink.update(BatchSnapshot(total=50, done=3))
    sink.update(BatchSnapshot(total=50, done=7, cached=4, failed=1, retrying=2, sent=3, rpm=600.0))
    sink.draw()
    assert (sink.bar.n, sink.bar.total) == (7, 50)
    text = sink.bar.final_text()
    assert "7/50" in text
    assert "cached 4, failed 1, retrying 2, 3 requests" in text
    assert "req/min" not in text  # not a second of data yet: no rate is made up


def test_bar_shows_output_tokens_per_second():
    """tok/s is the output-token increase over batch time."""
    sink, clock = notebook_sink()
    sink.update(BatchSnapshot(total=50, done=1, output_tokens=100, elapsed_s=1.0))
    sink.draw()
    clock.advance(1)
    sink.update(BatchSnapshot(total=50, done=2, output_tokens=400, elapsed_s=3.0))
    sink.draw()
    assert "150 tok/s" in sink.bar.final_text()


def test_bar_draws_throttled():
    """Draws closer together than min_interval_s, or with nothing new, do not redraw."""
    sink, clock = notebook_sink(min_interval_s=0.2)
    sink.update(BatchSnapshot(total=50, done=1))
    sink.draw()
    sink.update(BatchSnapshot(total=50, done=2))
    clock.advance(0.1)
    sink.draw()
    assert sink.bar.n == 1
    clock.advance(0.1)
    sink.draw()
    assert sink.bar.n == 2
    refreshes = len(sink.bar.refreshed_n)
    clock.advance(1.0)
    sink.draw()  # unchanged snapshot
    assert len(sink.bar.refreshed_n) == refreshes


def test_bar_close_done_fills_bar():
    """close('done') leaves n == total and the bar on screen."""
    sink, clock = notebook_sink()
    sink.update(BatchSnapshot(total=20, done=19))
    sink.draw()
    sink.close("done")
    assert sink.bar.n == sink.bar.total == 20
    assert "20/20" in sink.bar.final_text()
    assert sink.bar.buffer.getvalue().endswith("\n")  # kept (leave=True), not cleared


def test_bar_close_aborted_keeps_bar_marked_failed():
    """close('aborted') keeps the bar at the rows done, red, with the status in its label."""
    sink, clock = notebook_sink()
    sink.update(BatchSnapshot(total=500, done=120, failed=25))
    sink.close("aborted")
    sink.close("done")  # idempotent: the failure state stays
    bar = sink.bar
    assert bar.n == 120 and bar.colour == "red"
    assert "minima (aborted)" in bar.final_text() and "120/500" in bar.final_text()
    assert bar.buffer.getvalue().endswith("\n")


def test_notebook_widget_marked_danger_on_abort():
    """With tqdm's widget bar the failed close sets bar_style 'danger' and keeps it visible."""
    pytest.importorskip("ipywidgets")
    from tqdm.notebook import tqdm as notebook_tqdm

    sink = NotebookSink(clock=FakeClock(), tqdm_cls=notebook_tqdm)
    sink.update(BatchSnapshot(total=10, done=10, failed=1))
    sink.close("error")  # even at n == total a failed close must not turn green
    _, widget, _ = sink.bar.container.children
    assert widget.bar_style == "danger" and widget.value == 10
    assert sink.bar.container.layout.visibility != "hidden"


def test_notebook_widget_success_on_done():
    """With tqdm's widget bar close('done') shows a full, success-styled bar."""
    pytest.importorskip("ipywidgets")
    from tqdm.notebook import tqdm as notebook_tqdm

    sink = NotebookSink(clock=FakeClock(), tqdm_cls=notebook_tqdm)
    sink.update(BatchSnapshot(total=10, done=10))
    sink.close("done")
    _, widget, _ = sink.bar.container.children
    assert (widget.bar_style, widget.value, widget.max) == ("success", 10, 10)


def test_not_in_notebook_under_pytest():
    """pytest is not a Jupyter kernel."""
    assert running_in_notebook() is False


def test_make_sink_choices():
    """True picks text outside a kernel; False/None nothing; strings force a kind."""
    assert isinstance(make_sink(True), TextSink)
    assert isinstance(make_sink(False), NullSink)
    assert isinstance(make_sink(None), NullSink)
    assert isinstance(make_sink("text"), TextSink)
    assert isinstance(make_sink("Notebook"), NotebookSink)
    assert isinstance(make_sink("none"), NullSink)


def test_make_sink_passes_sink_through_and_settings_on():
    """A sink object is used as is; heartbeat and stall settings reach the text sink."""
    own = NullSink()
    assert make_sink(own) is own
    sink = make_sink("text", label="x", heartbeat_s=2.0, stall_s=3.0)
    assert (sink.label, sink.heartbeat_s, sink.stall_s) == ("x", 2.0, 3.0)
    assert isinstance(sink, ProgressSink)


def test_make_sink_rejects_unknown():
    """An unknown progress value is a ConfigError naming the choices."""
    with pytest.raises(ConfigError, match="notebook"):
        make_sink("fancy")
    with pytest.raises(ConfigError):
        make_sink(42)  # type: ignore[arg-type]
