"""Preemption and time-out of a SLURM job run by submitit: checkpoint first, then requeue.

submitit's own handler (``checkpoint_and_try_requeue`` on its signal, SIGUSR2 unless
``SUBMITIT_PREEMPT_SIGNAL`` says otherwise) requeues the job at once,
wherever training is, so the requeued job would start again from the last periodic checkpoint.
Inside a submitit SLURM job the harness defers it: that signal (SLURM's ``--signal=USR2@N``
before the time limit, or submitit's preemption) and SIGTERM (SLURM's preemption with
``PreemptMode=REQUEUE``, ``scontrol requeue``, ``scancel``) only set a flag; at the end of the
current optimizer step the Trainer saves a checkpoint and stops (:class:`repeatability.trial.train.
LoggingCallback`, which polls :func:`requested` through :mod:`repeatability.trial.stopping`), the run
raises :class:`Preempted`, the run claim is released, and only then submitit's handler runs: it
re-pickles the job and requeues it. After SIGTERM alone SLURM requeues (preemption) or ends (cancel)
the job itself, so the process just exits.
The requeued job finds the checkpoint and resumes bit for bit (:func:`repeatability.launching.sweep.run_one`).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from types import FrameType
from typing import Any

from repeatability.trial.stopping import Preempted, set_stop_check

__all__ = ["Preempted", "hand_over", "in_slurm_job", "install", "requested", "slurm_job"]

log = logging.getLogger(__name__)

_previous: dict[int, Any] = {}  # submitit's handlers, by signal number
_requested: list[int] = []  # signals caught since install(), in order


def _usr_signal() -> int:
    """submitit's preemption and time-out signal: ``SUBMITIT_PREEMPT_SIGNAL``, USR2 by default in
    submitit 1.5 (its sbatch line asks SLURM for ``--signal=USR2@<signal_delay_s>``)."""
    try:
        from submitit.core.job_environment import JobEnvironment

        return int(JobEnvironment._usr_sig())
    except ImportError:
        return int(getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2))


def in_slurm_job() -> bool:
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm"


def slurm_job() -> str | None:
    """This SLURM job as ``squeue``, ``scancel`` and the launcher's ledger lines name it:
    ``<array job id>_<task id>`` for an element of an array job, else ``<job id>``; None outside SLURM."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


def install() -> bool:
    """Defer submitit's preemption handling to the next optimizer step (inside submitit SLURM
    jobs only; elsewhere the signals keep their meaning). Returns whether it did."""
    _requested.clear()
    set_stop_check(requested)  # the trial polls it each optimizer step (repeatability.trial.stopping)
    if not in_slurm_job():
        return False
    for signum in (signal.SIGTERM, _usr_signal()):
        current = signal.getsignal(signum)
        if current is not _defer:
            _previous[signum] = current
            signal.signal(signum, _defer)
    return True


def _defer(signum: int, frame: FrameType | None) -> None:
    _requested.append(signum)
    log.warning("caught %s: checkpointing at the end of this optimizer step, then handing the job back to SLURM",
                signal.Signals(signum).name)


def requested() -> int | None:
    """The signal that asks this job to end: the requeue signal if it came, else SIGTERM."""
    if not _requested:
        return None
    usr = _usr_signal()
    return usr if usr in _requested else _requested[0]


def hand_over() -> None:
    """After the checkpoint: requeue through submitit (its handler exits the process), or exit."""
    signum = requested()
    if signum is None:
        return
    handler = _previous.get(signum)
    if signum != signal.SIGTERM and callable(handler):
        log.info("handing the job to submitit to requeue it")
        handler(signum, None)  # checkpoint_and_try_requeue: dumps the job, `scontrol requeue`, sys.exit
    log.info("exiting after %s; SLURM requeues a preempted job (a re-run of the sweep resumes it)",
             signal.Signals(signum).name)
    sys.exit(128 + signum)
