"""Writes that fail for want of storage: a full disk (ENOSPC), a quota (EDQUOT), a read-only
(EROFS) or failing (EIO) filesystem.

Every write of a run passes through :func:`writing` (the contract's atomic writes, the adapter,
the Trainer's checkpoints, the ledger, the report), which turns such a failure into one
:class:`StorageFault`: the file, its filesystem's mount point and that filesystem's free space,
said in one line. The sweep stops on it (later runs would fail the same way) and leaves the run
to resume; nothing else catches it (``docs/run-directory.md``, *When the disk is full*).

Libraries that write through their own I/O do not all raise ``OSError``: safetensors says
``No space left on device (os error 28)`` in a ``SafetensorError``, and ``torch.save`` only
``unexpected pos 576 vs 534`` (its stream lost the errno). The errno is read from the message
where there is one. A write inside :func:`writing` that fails without one is the filesystem's
fault when the filesystem is mounted read-only (EROFS) or has less than :data:`FULL_BELOW` free
(ENOSPC: more than one LoRA checkpoint record takes), or when torch says its write failed
(EIO otherwise: the line shows the free space); any other exception passes as it is.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# the faults of the filesystem, not of the program: each stops the sweep with one line
FAULTS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only filesystem",
          errno.EIO: "I/O error"}
FULL_BELOW = 64 << 20  # bytes: a write failing without an errno on a filesystem with less free is "disk full"
_ERRNO_IN_TEXT = re.compile(r"\[Errno (\d+)\]|\(os error (\d+)\)")  # Python's and Rust's (safetensors) wording
_TORCH_WRITE_FAILED = re.compile(r"unexpected pos \d+ vs \d+|PytorchStreamWriter failed writing|file write failed")


def size_text(n: float) -> str:
    """``0 B``, ``512 KiB``, ``24.1 MiB``, ``3.2 GiB`` (powers of 1024, as ``df -h``)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1000 or unit == "GiB":  # 1000 KiB reads better as 0.98 MiB
            return f"{n:.0f} {unit}" if unit in ("B", "KiB") else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def existing_ancestor(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (a study's folder may not exist yet)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def mount_point(path: Path) -> Path:
    """The mount point of the filesystem ``path`` is (or would be) on."""
    path = existing_ancestor(path).resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def usage(path: Path) -> tuple[int, int]:
    """``(free, total)`` bytes of ``path``'s filesystem, free as an unprivileged writer sees it;
    ``(0, 0)`` when even that cannot be read."""
    try:
        got = shutil.disk_usage(existing_ancestor(path))
    except OSError:
        return 0, 0
    return got.free, got.total


class StorageFault(OSError):
    """A write that failed because of its filesystem; ``str()`` is the one line that says so.

    Subclasses ``OSError`` (same ``errno``, ``strerror``, ``filename``), so code that already
    tolerates a failed write (a claim's heartbeat) still does.
    """

    def __init__(self, file: str | Path, code: int) -> None:
        super().__init__(code, os.strerror(code), str(file))
        self.file = Path(file)
        self.mount = mount_point(self.file)
        self.free, self.total = usage(self.file)
        self.run_dir: str | None = None  # the run it stopped, set by the sweep

    def __reduce__(self) -> tuple[Any, ...]:  # pickled by a parallel launcher's worker
        return (StorageFault, (self.file, self.errno))

    def __str__(self) -> str:
        return (f"{FAULTS.get(self.errno, self.strerror)}: cannot write {self.file} ({self.strerror}); "
                f"its filesystem {self.mount} has {size_text(self.free)} free of {size_text(self.total)}")


def fault_errno(exc: BaseException) -> int | None:
    """The storage errno behind ``exc`` or the exceptions it was raised from, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in FAULTS:
            return current.errno
        for match in _ERRNO_IN_TEXT.finditer(str(current)):
            code = int(match.group(1) or match.group(2))
            if code in FAULTS:
                return code
        current = current.__cause__ or current.__context__
    return None


def _fault_now(target: Path, write_failed: bool) -> int | None:
    """EROFS or ENOSPC when ``target``'s filesystem is read-only or nearly full right now; EIO
    when it is neither but the writer said its write failed; else None."""
    try:
        if os.statvfs(existing_ancestor(target)).f_flag & os.ST_RDONLY:
            return errno.EROFS
    except OSError:
        return errno.EIO if write_failed else None
    free, total = usage(target)
    if total and free < FULL_BELOW:
        return errno.ENOSPC
    return errno.EIO if write_failed else None


def fault_of(exc: BaseException, target: str | Path) -> StorageFault | None:
    """``exc`` as a :class:`StorageFault` (naming its file, else ``target``) when its errno, or
    its message, says the filesystem failed; None for any other exception."""
    if isinstance(exc, StorageFault):
        return exc
    code = fault_errno(exc)
    if code is None:
        return None
    named = getattr(exc, "filename", None)
    # a temporary name (.summary.json.x1y2.tmp, .adapter.tmp) says less than the file it was to become
    return StorageFault(named if named and not Path(named).name.startswith(".") else target, code)


@contextmanager
def writing(target: str | Path) -> Iterator[None]:
    """Turn a failed write of ``target`` (a file or a folder being filled) into a
    :class:`StorageFault` when the filesystem is at fault; any other exception passes as it is."""
    try:
        yield
    except StorageFault:
        raise
    except Exception as exc:
        fault = fault_of(exc, target)
        if fault is None:
            code = _fault_now(Path(target), bool(_TORCH_WRITE_FAILED.search(str(exc))))  # torch.save: no errno
            if code is None:
                raise
            fault = StorageFault(target, code)
        raise fault from exc


class LogFile(logging.FileHandler):
    """Hydra's per-job log file (``conf/hydra/job_logging``) that drops a line it cannot write
    for want of storage instead of printing a logging traceback: the console has the line, and
    the sweep says the fault itself in one line."""

    def handleError(self, record: logging.LogRecord) -> None:
        if fault_errno(sys.exc_info()[1] or Exception()) is None:
            super().handleError(record)
            return
        stream, self.stream = self.stream, None  # type: ignore[assignment]  # reopened by the next emit
        try:
            if stream is not None:
                stream.close()  # its buffer cannot be flushed: the file descriptor is closed regardless
        except OSError:
            pass
