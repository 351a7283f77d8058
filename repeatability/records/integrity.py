"""What makes a run finished: its manifest (every file's SHA-256), then ``DONE``; and the check
that a finished run's files are still what the manifest says. Names and atomic writes:
:mod:`repeatability.records.artifacts`."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from repeatability.records.artifacts import (
    DONE,
    FINISHED_STATUSES,
    IMPORTED,
    IMPORTED_FILES,
    MANIFEST,
    RUN_FILES,
    SUMMARY,
    WEIGHTS_FILE,
    read_json,
    write_json,
    write_summary,
    write_text,
)
from repeatability.records.errors import RunDirError

# Not hashed into the manifest: the summary (the contract: its numbers are checked by
# reading it), the manifest itself, and DONE (written after it; run_state checks it against the summary).
_UNHASHED = (SUMMARY, MANIFEST, DONE)


def mark_done(path: Path, leave_out: tuple[str, ...] = ()) -> None:
    """Write the manifest, then the completion marker; call last, after every other file is in place.

    ``leave_out``: top-level entries of the run not hashed because they are removed right after
    (the checkpoints of a run that does not keep them: they stay until ``DONE`` is written, so a
    run that cannot be marked done still resumes from them).
    """
    summary = read_json(path / SUMMARY)
    needed = IMPORTED_FILES if summary.get(IMPORTED) else RUN_FILES
    missing = [f for f in needed if f not in (MANIFEST, DONE) and not (path / f).exists()]
    if missing:
        raise RunDirError(f"{path}: cannot mark done, missing {', '.join(missing)}")
    if summary.get("status") not in FINISHED_STATUSES:
        raise RunDirError(f"{path}: cannot mark a {summary.get('status')!r} run done")
    if not summary.get(IMPORTED):  # an imported run holds nothing but its summary: nothing to hash
        write_json(path / MANIFEST, {"algorithm": "sha256", "files": {rel: file_sha256(path / rel)
                                                                       for rel in _hashed_files(path, leave_out)}})
    write_text(path / DONE, f"{summary['status']}\n")


def file_sha256(file: Path) -> str:
    """SHA-256 of one file (what ``sha256sum`` prints)."""
    digest = hashlib.sha256()
    with open(file, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _hashed_files(path: Path, leave_out: tuple[str, ...] = ()) -> list[str]:
    """Every regular file of the run (relative, ``/``-separated) that the manifest covers."""
    files = (p for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    return sorted(rel for rel in (p.relative_to(path).as_posix() for p in files)
                  if rel not in _UNHASHED and rel.split("/", 1)[0] not in leave_out)


def verify_manifest(path: Path) -> bool:
    """Check a finished run's files against ``MANIFEST.json``.

    Returns True when every listed file is present with its recorded SHA-256, False when the
    run has no manifest (written before manifests existed: nothing to verify). Files added
    after the run finished are not checked. Absent adapter weights are not kept (a published
    run record), not corrupted: :func:`repeatability.records.adapter_files.weights_kept` tells.

    Raises:
        RunDirError: one line naming each file that is missing or changed, or an unreadable manifest.
    """
    if not (path / MANIFEST).exists():
        return False
    manifest = read_json(path / MANIFEST)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files:
        raise RunDirError(f"{path / MANIFEST}: not a manifest (no files listed); delete the run and re-run it")
    bad = []
    for rel, sha in sorted(files.items()):
        if rel == WEIGHTS_FILE and not (path / rel).exists():
            continue  # a published run's record without its weights: "not kept", not corrupted
        if not (path / rel).is_file():
            bad.append(f"{path / rel} is missing")
        elif file_sha256(path / rel) != sha:
            bad.append(f"{path / rel} does not match its SHA-256 in {MANIFEST}")
    if bad:
        raise RunDirError(f"corrupted finished run: {'; '.join(bad)}; restore it, or delete {path} and "
                          "re-run its trial")
    return True


def write_imported_run(path: Path, summary: dict[str, Any]) -> None:
    """Write a run imported from a published table: ``summary.json``, then ``DONE``.

    ``summary`` carries :data:`IMPORTED` (``{source, citation, row}``) and a finished status;
    keys the source did not report are absent (no seeds, adapter, loss curve, generations or
    environment). The directory must not exist yet: an import never replaces a run.
    """
    if not summary.get(IMPORTED, {}).get("source"):
        raise ValueError(f"an imported run's summary needs {IMPORTED}.source")
    if summary.get("status") not in FINISHED_STATUSES:
        raise ValueError(f"an imported run's status must be one of {FINISHED_STATUSES}")
    if path.exists():
        raise RunDirError(f"{path}: already exists; an imported run never replaces a run directory")
    path.mkdir(parents=True)
    write_summary(path, summary)
    mark_done(path)
