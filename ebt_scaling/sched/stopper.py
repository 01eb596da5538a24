"""``ebt-scale cancel``: Tune's experiment-level stop, driven by the driver's sink (imports Ray: load lazily)."""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Stopper


class CancelStopper(Stopper):
    """Stops the whole sweep once the sink's ``cancel_requested()`` says so (a flag in the database that
    ``ebt-scale cancel`` sets), polled at most every ``every_s`` seconds in the driver. Tune then stops the
    trials as on Ctrl-C; the runner marks what did not finish ``cancelled`` and keeps its checkpoints."""

    def __init__(self, sink: Any, every_s: float = 2.0) -> None:
        self.sink, self.every_s, self.fired, self._next = sink, every_s, False, 0.0

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its RunConfig; the sink holds a database engine
        return {**self.__dict__, "sink": None}

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:  # noqa: ARG002 - Stopper API
        return False

    def stop_all(self) -> bool:
        poll = getattr(self.sink, "cancel_requested", None)
        if not self.fired and poll is not None and time.monotonic() >= self._next:
            self._next = time.monotonic() + self.every_s
            self.fired = bool(poll())
        return self.fired
