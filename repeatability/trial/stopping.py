"""How a launcher asks a running trial to stop early: a stop check the trainer polls at the end of
every optimizer step (then it saves a checkpoint and stops), and :class:`Preempted`, raised once that
checkpoint is written.

The trial defines this interface and a launcher sets the check
(:func:`repeatability.launching.preemption.install`), so the trial never imports a launcher: the layers
point down (launching → trial → records). Without a check set, nothing ever asks a trial to stop.
"""

from __future__ import annotations

import signal
from collections.abc import Callable


def _never() -> int | None:
    return None


_check: list[Callable[[], int | None]] = [_never]  # the launcher's check, set by set_stop_check


class Preempted(Exception):
    """Training stopped at ``step`` after a checkpoint, because the job was told to end."""

    def __init__(self, step: int, signum: int):
        self.step, self.signum = step, signum
        self.run_dir: str | None = None  # set by the sweep, for its ledger
        super().__init__(f"preempted ({signal.Signals(signum).name}): checkpoint saved at step {step}")


def set_stop_check(check: Callable[[], int | None]) -> None:
    """Install ``check``: it returns the signal that asks this process to end, or None."""
    _check[0] = check


def requested() -> int | None:
    """The signal that asks this trial to stop (per the launcher's check), or None."""
    return _check[0]()
