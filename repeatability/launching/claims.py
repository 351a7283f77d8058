"""Run claims: one launcher at a time works in a run directory, however many run the study.

A launcher claims ``<cell>/trial-NN`` before it touches it, by writing the claim file
``<cell>/trial-NN.claim`` (file names: :mod:`repeatability.records.artifacts`; the protocol is
documented in ``docs/run-directory.md``). The claim lies beside the run directory, not in it,
so redoing a run from scratch never deletes its own claim. It holds::

    {"host": ..., "pid": ..., "pid_started": ..., "process_space": ..., "token": ...,
     "started_at": ISO-8601 UTC, "heartbeat": ISO-8601 UTC}

Every change to a claim file (create, take over, heartbeat, release) happens under an
exclusive ``fcntl.flock`` of ``<cell>/.claims.lock``, so looking at a claim and replacing it is
one step: two launchers can never both take over the same stale claim, and a heartbeat never
overwrites a claim another launcher has taken. The lock is held for milliseconds, never for
the run.

A claim is *stale*, and taken over, when

- it was made on this machine (same host name, same boot and pid namespace) and its process
  is gone: the pid is not running, is a zombie, or is another process that reused the pid;
- it was made elsewhere and its heartbeat is older than ``claim_stale_after_s`` (clocks of
  the hosts sharing a results folder must agree to well within that).

A live claim's holder refreshes the heartbeat every ``claim_heartbeat_s`` from a daemon thread.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from repeatability.launching import launchers
from repeatability.records import artifacts
from repeatability.records.errors import RunDirError

if TYPE_CHECKING:  # typing.Self from Python 3.11
    from typing_extensions import Self

log = logging.getLogger(__name__)


class ClaimHeld(Exception):
    """The run directory is claimed by a live launcher (``holder``)."""

    def __init__(self, run: Path, holder: Holder) -> None:
        super().__init__(f"{run} running elsewhere: {holder.where}")
        self.holder = holder


class ClaimLost(RunDirError):
    """This launcher's claim was taken over (it was judged stale); it must not write there again."""


@dataclass(frozen=True)
class Holder:
    """What a claim file says about the launcher that made it."""

    host: str
    pid: int
    pid_started: str | None  # the process's start time (/proc/<pid>/stat field 22): tells pid reuse apart
    process_space: str  # boot id and pid namespace: pids compare only within one
    token: str  # unique per claim: a heartbeat or release touches only its own claim
    started_at: str
    heartbeat: str
    # ``<SLURM_JOB_ID>.<SLURM_RESTART_COUNT>`` inside a SLURM job: a requeued job (same id, higher
    # count) knows the claim of its earlier attempt is dead, on whichever node that ran
    slurm_job: str | None = None
    # the pid of the launcher this run belongs to (a joblib worker's parent, else the holder itself):
    # the thread budget counts live runs of *other* launchers on this host (other_live_jobs)
    launcher_pid: int | None = None

    @property
    def where(self) -> str:
        return f"{self.host}/{self.pid}"


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _read_proc(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def process_space() -> str:
    """``<boot id>:<pid namespace inode>``; empty where /proc does not say (then pids are trusted as is)."""
    boot = (_read_proc("/proc/sys/kernel/random/boot_id") or "").strip()
    try:
        namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        namespace = ""
    return f"{boot}:{namespace}" if boot and namespace else ""


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state letter, start time in clock ticks after boot) of a process, or None if unknown."""
    stat = _read_proc(f"/proc/{pid}/stat")
    if stat is None:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # the command name may hold spaces and ')'
    return fields[0], fields[19]


def pid_alive(pid: int, started: str | None) -> bool:
    """Whether ``pid`` runs on this machine and, if ``started`` is known, is the same process."""
    if pid <= 0:  # kill(0 or -n, 0) would ask about a process group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    stat = _proc_stat(pid)
    if stat is None:
        return True
    state, start = stat
    return state != "Z" and (started is None or start == started)


def slurm_attempt() -> str | None:
    """``<job id>.<restart count>`` of the SLURM job this process runs in, if any."""
    job = os.environ.get("SLURM_JOB_ID")
    return f"{job}.{os.environ.get('SLURM_RESTART_COUNT', '0')}" if job else None


def stale_reason(holder: Holder, stale_after_s: float, now: dt.datetime | None = None) -> str | None:
    """Why ``holder``'s claim may be taken over, or None while it is live."""
    ours = slurm_attempt()
    if holder.slurm_job and ours and holder.slurm_job != ours and \
            holder.slurm_job.split(".")[0] == ours.split(".")[0]:
        return f"SLURM job {ours.split('.')[0]} was requeued: its attempt {holder.slurm_job} is over"
    if holder.host == socket.gethostname() and holder.process_space == process_space():
        if pid_alive(holder.pid, holder.pid_started):
            return None
        return f"pid {holder.pid} is no longer running on this host"
    age = ((now or utc_now()) - dt.datetime.fromisoformat(holder.heartbeat)).total_seconds()
    if age <= stale_after_s:
        return None
    return f"last heartbeat {age:.0f} s ago, over claim_stale_after_s={stale_after_s:g}"


@contextmanager
def _locked(run: Path) -> Iterator[None]:
    """Hold the cell's claims lock (created once, never deleted: deleting lock files races)."""
    lock = artifacts.claims_lock_file(run)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            raise RunDirError(f"{lock}: cannot lock ({exc.strerror}); results_dir must be on a filesystem "
                              "with file locks (flock) for run claims") from None
        yield
    finally:
        os.close(fd)  # releases the lock


def read_claim(run: Path) -> Holder | None:
    """The claim on ``run``, or None when unclaimed. An unreadable claim file reads as a dead
    claim (writes are atomic renames, so only something outside this protocol makes one)."""
    file = artifacts.claim_file(run)
    if not file.exists():
        return None
    try:
        data = artifacts.read_json(file)
        # later extra keys are ignored; claims written before slurm_job / launcher_pid existed have none
        optional = {"slurm_job", "launcher_pid"}
        holder = Holder(**{f.name: data[f.name] for f in fields(Holder) if f.name in data or f.name not in optional})
        if dt.datetime.fromisoformat(holder.heartbeat).tzinfo is None or not isinstance(holder.pid, int):
            raise ValueError("heartbeat without a time zone")
        return holder
    except (RunDirError, TypeError, KeyError, ValueError):
        return Holder("?", 0, None, "?", "?", "1970-01-01T00:00:00+00:00", "1970-01-01T00:00:00+00:00")


def _new_holder() -> Holder:
    stat = _proc_stat(os.getpid())
    now = utc_now().isoformat(timespec="seconds")
    return Holder(socket.gethostname(), os.getpid(), stat[1] if stat else None, process_space(),
                  uuid.uuid4().hex, now, now, slurm_attempt(), launchers.launcher_pid())


def other_live_jobs(results_dir: str | Path, mine: int | None = None) -> int:
    """Live runs on this host under ``results_dir`` held by another launcher than ``mine``
    (default: this process's, :func:`repeatability.launching.launchers.launcher_pid`): each is one
    more job on these cores in the thread budget."""
    mine = launchers.launcher_pid() if mine is None else mine
    host, space = socket.gethostname(), process_space()
    count = 0
    for file in Path(results_dir).glob(f"*/*/trial-*{artifacts.CLAIM_SUFFIX}"):
        holder = read_claim(file.with_name(file.name.removesuffix(artifacts.CLAIM_SUFFIX)))
        if holder is None or holder.host != host or holder.process_space != space:
            continue
        if (holder.launcher_pid or holder.pid) != mine and pid_alive(holder.pid, holder.pid_started):
            count += 1
    return count


@dataclass
class Claim:
    """A claim this process holds on ``run``; use as a context manager (heartbeat, then release).

    ``took_over`` is the stale holder replaced, with the reason, when there was one.
    """

    run: Path
    holder: Holder
    heartbeat_s: float
    took_over: tuple[Holder, str] | None = None

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lost = False
        self._thread: threading.Thread | None = None

    def held(self) -> bool:
        """Whether the claim file still names this claim (looked up now, under the lock)."""
        if self._lost:
            return False
        with _locked(self.run):
            current = read_claim(self.run)
        self._lost = current is None or current.token != self.holder.token
        return not self._lost

    def check(self) -> None:
        """Raise :class:`ClaimLost` unless this claim is still held."""
        if not self.held():
            current = read_claim(self.run)
            raise ClaimLost(f"{self.run}: this launcher's claim was taken over"
                            f"{' by ' + current.where if current else ''}; not writing there")

    def beat(self) -> None:
        """Refresh the heartbeat if the claim is still ours; otherwise mark it lost."""
        with _locked(self.run):
            current = read_claim(self.run)
            if current is None or current.token != self.holder.token:
                self._lost = True
                return
            now = utc_now().isoformat(timespec="seconds")
            artifacts.write_json(artifacts.claim_file(self.run), asdict(current) | {"heartbeat": now})

    def _beat_forever(self) -> None:
        while not self._stop.wait(self.heartbeat_s) and not self._lost:
            try:
                self.beat()
            except OSError as exc:  # a passing filesystem hiccup must not end the run
                log.warning("%s: heartbeat not written (%s)", self.run, exc)
        if self._lost:
            log.error("%s: claim taken over by another launcher; this run will not record anything there", self.run)

    def release(self) -> None:
        """Remove the claim file if it is still ours (a taken-over claim is left to its new holder)."""
        with _locked(self.run):
            current = read_claim(self.run)
            if current is not None and current.token == self.holder.token:
                artifacts.claim_file(self.run).unlink()

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._beat_forever, name=f"claim-heartbeat {self.run.name}",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.release()


def acquire(run: Path, stale_after_s: float, heartbeat_s: float) -> Claim:
    """Claim ``run`` for this process, taking over a stale claim.

    Raises:
        ClaimHeld: a live launcher holds it (its host/pid in the message).
        RunDirError: the cell's lock cannot be taken (a filesystem without locks).
    """
    mine = _new_holder()
    with _locked(run):
        current = read_claim(run)
        reason = stale_reason(current, stale_after_s) if current is not None else None
        if current is not None and reason is None:
            raise ClaimHeld(run, current)
        artifacts.write_json(artifacts.claim_file(run), asdict(mine))
    return Claim(run, mine, heartbeat_s, (current, reason) if current is not None and reason else None)
