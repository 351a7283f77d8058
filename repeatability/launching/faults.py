"""What a sweep does when its filesystem fails (full, over quota, read-only, I/O error).

Any write of a run that fails that way arrives at the sweep as one
:class:`~repeatability.records.storage.StorageFault`. The sweep then

- frees what the failed write left (a torn checkpoint: never resumed from, but it holds space),
  records the run as failed if the disk still takes that, and otherwise leaves it incomplete:
  both resume from the last complete checkpoint on a re-run, and nothing is marked done;
- says the fault in one line on stderr (:func:`say`): the file, its filesystem's mount point
  and free space, and what to do — no traceback;
- stops, because every later run would fail the same way: the basic launcher's process exits 1
  at once, listing the runs that finished (:func:`stop_line`); a parallel launcher's other jobs
  find the sweep's :data:`STOP_MARKER` and do not start, and the sweep's end lists them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from repeatability.records import checkpoint_files
from repeatability.records.storage import StorageFault

STOP_MARKER = "stopped"  # _sweeps/<time>_<pid>/stopped: a job hit a storage fault; later jobs do not start
STOPPED, NOT_STARTED = "stopped", "not_started"  # ledger statuses: the faulted run, the jobs after it
FINISHED = ("complete", "diverged", "skipped")
RERUN_HINT = ("free space there (or set results_dir= to a larger filesystem) and re-run the same command: "
              "finished runs are skipped, the stopped one resumes from its last complete checkpoint")
_stopped_sweeps: set[Path] = set()  # this process's sweeps that stopped (when the marker could not be written)


def say(fault: StorageFault) -> None:
    """The fault as the one ``error:`` line on stderr."""
    print(f"error: {fault}; {RERUN_HINT}", file=sys.stderr, flush=True)


def free_torn(run: Path) -> None:
    """Remove the torn checkpoints a failed save left in ``run`` (complete ones stay)."""
    checkpoint_files.remove_torn_checkpoints(run)


def mark(sweep_dir: Path | None) -> None:
    """Tell the sweep's later jobs (in any process) not to start; an empty file needs no free block."""
    if sweep_dir is None:
        return
    _stopped_sweeps.add(sweep_dir)
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        os.close(os.open(sweep_dir / STOP_MARKER, os.O_CREAT | os.O_WRONLY, 0o666))
    except OSError:  # not even an inode left: this process still knows
        pass


def stopped(sweep_dir: Path | None) -> bool:
    """Whether a job of this sweep has stopped it."""
    return sweep_dir is not None and (sweep_dir in _stopped_sweeps or (sweep_dir / STOP_MARKER).exists())


def _short(run_dir: str | None) -> str:
    """``<cell>/trial-NN`` of a run directory."""
    return "/".join(Path(run_dir).parts[-2:]) if run_dir else "?"


def stop_line(entries: list[dict[str, Any]], total: str) -> str:
    """One line: which runs finished (by their last ledger entry), which stopped, how many of
    ``total`` did not start."""
    last: dict[Any, dict[str, Any]] = {}
    for i, e in enumerate(entries):
        last[e.get("run_dir") or ("entry", i)] = e
    finished = [f"{_short(e['run_dir'])} ({e.get('was') or e['status']})" for e in last.values()
                if e["status"] in FINISHED]
    halted = [_short(e.get("run_dir")) for e in last.values() if e["status"] == STOPPED and e.get("run_dir")]
    started = sum(e["status"] != NOT_STARTED for e in last.values())
    rest = f"{int(total) - started} not started" if total.isdigit() else "the rest not started"
    return (f"sweep stopped for want of storage: {len(finished)} of {total} runs finished"
            f"{': ' + ', '.join(finished) if finished else ''}; stopped: {', '.join(halted) or 'none'}; {rest}")
