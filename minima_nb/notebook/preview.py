"""The live preview under the notebook bar: the last few answers and failures as they arrive.

A user should see after ten rows that the prompt is wrong, not after ten thousand. The preview
is an ``ipywidgets.HTML`` shown in a box under the tqdm bar; it renders the snapshot's
``recent_answers`` and ``recent_failures`` (kept by the batch meter, a few of each), each cut
to one line: the prompt (``prompt_of(request_id)``) and the answer (``answer_of(request_id,
text)``: a sweep names its grid values, predict shows input and output fields), or the
failure's reason.
It redraws at most every ``interval_s`` whatever the answer rate, and once more at the end, so
a failed batch's cell keeps its last failures on screen. ``preview=False`` turns it off.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..engine.progress import Clock
from ..types import BatchSnapshot

PREVIEW_INTERVAL_S = 0.3  # at most ~3 redraws a second, at any answer rate
LINE_CHARS = 80
PROMPT_CHARS = 60  # room for a sweep's grid values before the prompt


def one_line(text: str, limit: int = LINE_CHARS) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def fields_line(values: Mapping[str, Any]) -> str:
    """``"verdict: correct · score: 4.0"``: fields on one line, a ``reasoning`` field last
    (it is long, and the short fields are what a reader checks first)."""
    names = sorted(values, key=lambda name: name == "reasoning")
    return " · ".join(f"{name}: {values[name]}" for name in names)


def typed_answer(parse: Callable[[str], Mapping[str, Any]]) -> Callable[[str, str], str]:
    """The preview's answer for ``schema=``: the fields on one line (the raw text if invalid)."""
    def answer_of(request_id: str, text: str) -> str:
        try:
            return fields_line(parse(text))
        except ValueError:  # an invalid answer is shown as it came; it is asked again
            return text

    return answer_of


class Preview:
    """The preview widget of one bar, and its redraw throttle."""

    def __init__(self, prompt_of: Callable[[str], str] | None = None, *,
                 answer_of: Callable[[str, str], str] | None = None,
                 interval_s: float = PREVIEW_INTERVAL_S, clock: Clock = time.monotonic) -> None:
        self.prompt_of = prompt_of or (lambda request_id: request_id)
        # (request_id, answer text) -> what to show: predict shows the parsed output fields
        self.answer_of = answer_of or (lambda request_id, text: text)
        self.interval_s = interval_s
        self._clock = clock
        self.widget: Any = None
        self.draws = 0  # how many times the widget's value was set (tests read it)
        self._drawn_at: float | None = None

    def box(self, container: Any) -> Any:
        """The bar's container with the preview under it, to display instead of the bar."""
        import ipywidgets  # the notebook bar is an ipywidgets bar: it is there

        self.widget = ipywidgets.HTML(value="")
        return ipywidgets.VBox([container, self.widget])

    def lines(self, snapshot: BatchSnapshot) -> list[str]:
        """The preview's text lines for ``snapshot`` (answers, then failures)."""
        out = [f"✓ {one_line(self.prompt_of(rid), PROMPT_CHARS)} → {one_line(self.answer_of(rid, text))}"
               for rid, text in snapshot.recent_answers]
        out += [f"✗ {one_line(self.prompt_of(rid), PROMPT_CHARS)} → {one_line(reason)}"
                for rid, reason in snapshot.recent_failures]
        return out

    def draw(self, snapshot: BatchSnapshot, final: bool = False) -> None:
        """Set the widget's value, unless drawn less than ``interval_s`` ago (``final`` always)."""
        if self.widget is None:
            return
        now = self._clock()
        if not final and self._drawn_at is not None and now - self._drawn_at < self.interval_s:
            return
        lines = self.lines(snapshot)
        value = ("<pre style='margin:0;font-size:90%;line-height:1.3'>"
                 + "\n".join(html.escape(line) for line in lines) + "</pre>") if lines else ""
        self._drawn_at = now
        if value != self.widget.value:
            self.widget.value = value
            self.draws += 1


def prompt_resolver(slots: list[Any]) -> Callable[[str], str]:
    """``request_id`` ("row-<position>") -> the last user message of that slot, for the preview."""
    def prompt_of(request_id: str) -> str:
        try:
            messages = slots[int(str(request_id).rsplit("-", 1)[-1])]
        except (ValueError, IndexError):
            return str(request_id)
        for message in reversed(messages or []):
            if message.get("role") == "user":
                content = message.get("content")
                return content if isinstance(content, str) else str(content)
        return str(request_id)

    return prompt_of
