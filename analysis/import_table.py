"""``python -m analysis.import_table FILE.csv --study NAME``: a published table as a study.

Each CSV row is one run of a published study: columns ``model, dataset, optim, trial,
perplexity`` are required; ``variant``, ``notes``, ``perplexity_mean_per_sequence``,
``base_perplexity``, ``gpu_memory_pct``, ``gpu_memory_mb``, ``train_s``, ``eval_s`` are
optional (an empty cell = not reported). Each row becomes ``results/<study>/<cell>/trial-NN``
through the run-directory contract (:func:`repeatability.records.integrity.write_imported_run`):
``summary.json`` with what the row says and ``imported`` = {source, citation, row}, then
``DONE``. Nothing is invented: no seeds, adapter, loss curve, generations or environment.
A finite perplexity makes the run ``complete``; ``inf`` (an overflowed perplexity, as the
source reports it) makes it ``diverged``.

Then ``python -m analysis.report results/<study>`` reports it like any other study, and
``--compare`` puts it next to runs of this harness.

Exit codes: 0 imported (prints the study directory); 2 bad input, with one line on stderr
naming the problem and the fix, and nothing written (every row is checked, and every target
run directory must be new, before the first file is written).
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repeatability.records import artifacts, integrity
from repeatability.records.errors import RunDirError
from repeatability.records.summary import COLUMNS as S

log = logging.getLogger(__name__)

REQUIRED = ("model", "dataset", "optim", "trial", "perplexity")
NUMBERS = {  # optional CSV column → summary key
    "perplexity_mean_per_sequence": S.metrics.perplexity_mean_per_sequence,
    "base_perplexity": S.metrics.base_perplexity_token_weighted,
    "gpu_memory_pct": S.memory.max_allocated_pct,
    "gpu_memory_mb": S.memory.max_allocated_mb,
    "train_s": S.timings.train_s,
    "eval_s": S.timings.eval_s,
}
TEXT = ("variant", "notes")  # optional text columns (notes stay in imported.row only)


class TableError(Exception):
    """Bad input: the message is one line naming the problem and the fix."""


@dataclass(frozen=True)
class Row:
    """One checked CSV row: where it was, its cell and trial, and the summary keys it gives."""

    line: int
    cell: artifacts.CellKey
    trial: int
    perplexity: float
    values: dict[str, float]  # summary key (dotted) → number, only those reported
    raw: dict[str, str]


def _number(text: str, what: str, where: str) -> float:
    """A positive number; ``inf`` only for a perplexity (an overflow the source reports)."""
    try:
        value = float(text)
    except ValueError:
        raise TableError(f"{where}: {what} {text!r} is not a number; write it as the source "
                         "prints it (e.g. 3.567), or leave the run out by removing the row") from None
    if math.isnan(value) or value <= 0 or (math.isinf(value) and not what.startswith("perplexity")):
        raise TableError(f"{where}: {what} {text!r} must be a positive number; leave a value the "
                         "source does not report empty (optional columns) or remove the row")
    return value


def _cell(raw: dict[str, str], where: str) -> artifacts.CellKey:
    cell = artifacts.CellKey(raw["model"], raw["dataset"], raw["optim"], raw.get("variant", ""))
    try:
        cell.dirname  # noqa: B018 - checks every part of the name
    except RunDirError as exc:
        raise TableError(f"{where}: {exc}; use the harness's preset names (e.g. llama2-7b, "
                         "english_quotes, paged_adamw_8bit)") from None
    return cell


def _trial(text: str, where: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise TableError(f"{where}: trial {text!r} is not a positive integer; number the runs "
                         "1, 2, 3 ... as the source does")
    return int(text)


def parse_row(raw: dict[str, str], line: int, file: str) -> Row:
    """Check one row (stripped strings by column name) and turn it into a :class:`Row`."""
    where = f"{file}:{line}"
    perplexity = raw["perplexity"]
    if not perplexity:
        raise TableError(f"{where}: perplexity is empty; a run the source does not report is "
                         "left out: remove the row")
    value = _number(perplexity, "perplexity", where)
    values = {key: _number(raw[col], col, where) for col, key in NUMBERS.items() if raw.get(col)}
    return Row(line, _cell(raw, where), _trial(raw["trial"], where), value, values, raw)


def read_table(path: Path) -> list[Row]:
    """Every row of the CSV, checked; raises :class:`TableError` at the first problem."""
    if not path.is_file():
        raise TableError(f"{path}: no such file; give the path of the CSV to import")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise TableError(f"{path}: missing column(s) {', '.join(missing)}; the header needs "
                             f"{', '.join(REQUIRED)} (optional: {', '.join(TEXT + tuple(NUMBERS))})")
        unknown = [h for h in header if h not in REQUIRED + TEXT + tuple(NUMBERS)]
        if unknown:
            log.warning("%s: column(s) %s kept in imported.row only", path, ", ".join(unknown))
        rows = []
        for raw in reader:
            if raw.get(None):  # DictReader files surplus values under the key None
                raise TableError(f"{path}:{reader.line_num}: more values than columns; quote "
                                 "values that contain commas")
            clean = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            if any(clean.values()):  # blank lines are skipped
                rows.append(parse_row(clean, reader.line_num, str(path)))
    if not rows:
        raise TableError(f"{path}: no data rows; add one row per run under the header")
    _check_duplicates(rows, path)
    return rows


def _check_duplicates(rows: list[Row], path: Path) -> None:
    seen: dict[tuple[str, int], int] = {}
    for row in rows:
        key = (row.cell.dirname, row.trial)
        if key in seen:
            raise TableError(f"{path}:{row.line}: cell {key[0]} trial {row.trial} is already on "
                             f"line {seen[key]}; keep one row per cell and trial")
        seen[key] = row.line


def _nest(dotted: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def summary_of(row: Row, study: str, source: str, citation: str | None) -> dict[str, Any]:
    """The summary of one imported run: only what the row reports, plus where it came from."""
    status = "complete" if math.isfinite(row.perplexity) else "diverged"
    cell = row.cell
    label = f"{cell.model} x {cell.dataset} x {cell.optim}" + (f" ({cell.variant})" if cell.variant else "")
    imported = {"source": source, "row": row.raw} | ({"citation": citation} if citation else {})
    summary = _nest({S.metrics.perplexity_token_weighted: row.perplexity, **row.values})
    summary |= {"status": status, "study": study, "trial": row.trial, "imported": imported,
                "cell": {"model": cell.model, "dataset": cell.dataset, "optim": cell.optim,
                         "variant": cell.variant},
                "headline": f"Imported, not run here: trial {row.trial} of {label} as reported by "
                            f"{source}: perplexity {row.raw['perplexity']} ({status}). The source "
                            "reports no seeds, adapter, loss curve, generations or environment."}
    if status == "diverged":
        summary["divergence"] = {"reason": "perplexity reported as infinite by the source"}
    return summary


def _check_study_name(study: str) -> None:
    if not study or study in (".", "..") or "/" in study or "\\" in study or study[0] in "_.":
        raise TableError(f"--study {study!r}: must be a plain directory name (no '/', not "
                         "starting with '_' or '.'), e.g. paper-tables-1-2")


def import_table(csv_path: str | Path, study: str, results_dir: str | Path = "results",
                 source: str | None = None, citation: str | None = None) -> Path:
    """Check the whole CSV and every target directory, then write one run per row.

    Raises:
        TableError: bad input; nothing has been written.
    """
    _check_study_name(study)
    rows = read_table(Path(csv_path))
    targets = [(artifacts.run_dir(results_dir, study, r.cell, r.trial), r) for r in rows]
    existing = [str(path) for path, _ in targets if path.exists()]
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise TableError(f"{existing[0]}{more} already exists; nothing was written: import into a "
                         "new --study, or delete those run directories first")
    src = source or str(csv_path)
    for path, row in targets:
        integrity.write_imported_run(path, summary_of(row, study, src, citation))
    log.info("imported %d runs into %s", len(rows), artifacts.study_dir(results_dir, study))
    return artifacts.study_dir(results_dir, study)


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status (2 via ``parser.exit`` on bad input)."""
    parser = argparse.ArgumentParser(prog="python -m analysis.import_table", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", help="the table, one row per run (see above for the columns)")
    parser.add_argument("--study", required=True, help="study name: results/<study>/")
    parser.add_argument("--results-dir", default="results", help="default: results")
    parser.add_argument("--source", help="where the numbers come from (default: the CSV path)")
    parser.add_argument("--citation", help="the publication, as it should be cited")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", force=True)
    try:
        study = import_table(args.csv, args.study, args.results_dir, args.source, args.citation)
    except TableError as exc:
        parser.exit(2, f"error: {exc}\n")
    print(study)  # the one line of stdout: where the study is
    return 0


if __name__ == "__main__":
    sys.exit(main())
