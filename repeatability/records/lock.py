"""The environment against the project's lock files (``requirements/*.txt``, written by ``make lock``).

``make setup`` installs ``requirements/cpu.txt`` (or ``cuda.txt`` with ``LOCK=cuda``: CUDA 13, or
``cuda12.txt`` with ``LOCK=cuda12``: CUDA 12.8 and torch 2.10.0, PyPI's newest CUDA 12 build) plus
``requirements/bootstrap.txt`` (uv itself) with hashes required. Every run records here which lock
its environment was compared with, the lock's SHA-256, and every installed distribution that differs
from it (``environment.json`` key ``lock``; the summary's ``lock`` group). A mismatch is not an error:
people run on their own stacks, and the record says so.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

PROJECT_ROOT = Path(__file__).resolve().parents[2]
LOCK_DIR = PROJECT_ROOT / "requirements"
BOOTSTRAP = "bootstrap.txt"
# Installed by `python -m venv` (pip, setuptools) or by the editable install of this project, on
# top of the lock: never a mismatch.
NOT_LOCKED = frozenset({"pip", "setuptools", "repeatability"})


@dataclass
class LockCheck:
    """An environment compared with one lock file."""

    file: str | None  # relative to the project, e.g. requirements/cpu.txt; None: no lock file found
    sha256: str | None
    matches: bool | None  # None when there is no lock to compare with
    mismatched: list[str] = field(default_factory=list)

    def line(self) -> str | None:
        """One line for preflight when the environment is not the lock's; None when it is."""
        if self.matches:
            return None
        if self.file is None:
            return (f"environment is not locked: no {LOCK_DIR.name}/*.txt beside the package; runs record "
                    "their package versions only (install with `make setup` for a locked environment)")
        shown = ", ".join(self.mismatched[:4]) + (f" and {len(self.mismatched) - 4} more"
                                                  if len(self.mismatched) > 4 else "")
        return (f"environment differs from {self.file} in {len(self.mismatched)} distribution(s): {shown}; "
                "runs record it (`make setup` installs the lock exactly)")

    def to_dict(self) -> dict:
        return {"file": self.file, "sha256": self.sha256, "matches": self.matches, "mismatched": list(self.mismatched)}


def parse_lock(path: Path) -> dict[str, str]:
    """``{canonical name: version}`` of a hashed requirements lock (``name==version \\`` lines)."""
    pins: dict[str, str] = {}
    logical = path.read_text().replace("\\\n", " ").splitlines()
    for line in logical:
        text = line.split("#", 1)[0].strip()
        if not text or text.startswith("-"):
            continue
        text = " ".join(t for t in text.split() if not t.startswith("--hash="))
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            raise ValueError(f"{path}: cannot read the pin {text!r} ({exc}); regenerate it with `make lock`") from None
        pinned = [s.version for s in req.specifier if s.operator == "=="]
        if len(pinned) != 1:
            raise ValueError(f"{path}: {req.name} is not pinned with == ; regenerate it with `make lock`")
        pins[canonicalize_name(req.name)] = pinned[0]
    return pins


def _search_path_state() -> tuple[tuple[str, int], ...]:
    """Each ``sys.path`` folder with its modification time: an install or uninstall adds or removes
    a ``*.dist-info`` folder there, which changes the time."""
    state = []
    for entry in sys.path:
        try:
            state.append((entry, os.stat(entry or ".").st_mtime_ns))
        except OSError:
            state.append((entry, -1))
    return tuple(state)


_INSTALLED: dict[tuple[tuple[str, int], ...], dict[str, str]] = {}


def installed() -> dict[str, str]:
    """``{canonical name: version}`` of the distributions this interpreter sees.

    Reading every distribution's metadata takes ~0.5 s on the 2-core EPYC, and a sweep of many
    runs in one process asks once per run: the answer is kept while no folder on ``sys.path``
    changed (:func:`_search_path_state`)."""
    key = _search_path_state()
    if key not in _INSTALLED:
        out: dict[str, str] = {}
        for dist in importlib.metadata.distributions():
            name = dist.metadata["Name"]
            if name:
                out.setdefault(canonicalize_name(name), dist.version)
        _INSTALLED.clear()
        _INSTALLED[key] = out
    return dict(_INSTALLED[key])


def lock_for_this_torch() -> Path:
    """The lock this environment should equal: cuda12.txt or cuda.txt under a CUDA 12 or 13 build of
    torch, else cpu.txt."""
    import torch

    return LOCK_DIR / lock_name(torch.version.cuda)


def lock_name(cuda_version: str | None) -> str:
    """The lock file for a torch built against ``cuda_version`` (``torch.version.cuda``; None: CPU)."""
    if not cuda_version:
        return "cpu.txt"
    return "cuda12.txt" if cuda_version.split(".")[0] == "12" else "cuda.txt"


def compare(pins: dict[str, str], have: dict[str, str]) -> list[str]:
    """What differs between the lock's pins and the installed set, one phrase per distribution."""
    out = []
    for name in sorted(set(pins) | set(have)):
        if name in NOT_LOCKED:
            continue
        if name not in have:
            out.append(f"{name} missing (lock {pins[name]})")
        elif name not in pins:
            out.append(f"{name} {have[name]} not in the lock")
        elif have[name] != pins[name]:
            out.append(f"{name} {have[name]} (lock {pins[name]})")
    return out


def check(lock: Path | None = None, have: dict[str, str] | None = None) -> LockCheck:
    """This environment against ``lock`` (default: :func:`lock_for_this_torch`) plus the bootstrap lock."""
    lock = lock or lock_for_this_torch()
    if not lock.is_file():
        return LockCheck(file=None, sha256=None, matches=None)
    pins = parse_lock(lock)
    bootstrap = lock.parent / BOOTSTRAP
    if bootstrap.is_file() and bootstrap != lock:
        pins = {**parse_lock(bootstrap), **pins}
    diff = compare(pins, installed() if have is None else have)
    try:
        rel = str(lock.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        rel = str(lock)
    return LockCheck(file=rel, sha256=hashlib.sha256(lock.read_bytes()).hexdigest(), matches=not diff, mismatched=diff)
