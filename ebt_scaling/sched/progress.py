"""Terminal progress of a sweep: done / running / failed / pending, percent of planned compute, ETA.

A rich live bar on a terminal; one plain line per change otherwise (CI logs, pipes)."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)
ETA_MIN_S = 5.0  # seconds of measured progress before an ETA is shown


def fmt_duration(s: float | None) -> str:
    if s is None or s != s or s == float("inf"):
        return "?"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


@dataclass
class ProgressState:
    total: int
    done: int = 0
    failed: int = 0
    running: int = 0
    fraction: float = 0.0  # of the planned compute, running runs counted by their steps
    started: float = field(default_factory=time.monotonic)
    # When progress was first seen above 0, and how much: the ETA's rate is measured from there, so Ray's
    # start-up, data preparation and the first step's set-up do not stretch it.
    first_progress_at: float | None = None
    first_fraction: float = 0.0

    def observe(self, fraction: float) -> None:
        """Record the share of the planned compute done so far."""
        if fraction > 0 and self.first_progress_at is None:
            self.first_progress_at, self.first_fraction = time.monotonic(), fraction
        self.fraction = fraction

    @property
    def pending(self) -> int:
        return max(0, self.total - self.done - self.failed - self.running)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def eta(self) -> float | None:
        """Remaining compute over the measured rate since progress was first seen (None until a rate exists:
        ETA_MIN_S of progress)."""
        if self.first_progress_at is None:
            return None
        dt = time.monotonic() - self.first_progress_at
        gained = self.fraction - self.first_fraction
        if dt < ETA_MIN_S or gained <= 0:
            return None
        return (1.0 - self.fraction) * dt / gained

    def line(self, name: str) -> str:
        return (f"[{name}] done {self.done}/{self.total} · running {self.running} · failed {self.failed} · "
                f"pending {self.pending} · {100 * self.fraction:.0f}% · elapsed {fmt_duration(self.elapsed)} · "
                f"ETA {fmt_duration(self.eta)}")


class SweepProgress:
    """Shows a ProgressState; ``mode`` is ``rich``, ``plain`` or ``off`` (``auto``: rich on a terminal)."""

    def __init__(self, name: str, total: int, mode: str = "auto") -> None:
        self.name = name
        self.state = ProgressState(total=total)
        if mode == "auto":
            mode = "rich" if sys.stderr.isatty() else "plain"
        self.mode = mode
        self._last_line = ""
        self._last_plain = 0.0
        self._progress = None
        self._task = None

    def start(self) -> None:
        if self.mode == "rich":
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn

            self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                      TextColumn("{task.fields[info]}"), console=Console(stderr=True),
                                      transient=False, refresh_per_second=4)
            self._progress.start()
            self._task = self._progress.add_task(self.name, total=1.0, info="starting Ray")
        elif self.mode == "plain":
            log.info("[%s] %d run(s) to do", self.name, self.state.total)

    def message(self, text: str) -> None:
        if self.mode == "off":
            return
        if self._progress is not None:
            self._progress.console.print(text)
        else:
            log.info("%s", text)

    def update(self, force: bool = False) -> None:
        s = self.state
        if self._progress is not None and self._task is not None:
            info = (f"done {s.done}/{s.total} · running {s.running} · failed {s.failed} · pending {s.pending}"
                    f" · {fmt_duration(s.elapsed)} elapsed · ETA {fmt_duration(s.eta)}")
            self._progress.update(self._task, completed=s.fraction, info=info)
        elif self.mode == "plain":
            key = f"{s.done}/{s.running}/{s.failed}"
            now = time.monotonic()
            if force or key != self._last_line or now - self._last_plain > 30:
                self._last_line, self._last_plain = key, now
                log.info("%s", s.line(self.name))

    def stop(self) -> None:
        self.update(force=True)
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
