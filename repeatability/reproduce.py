"""``python -m repeatability.reproduce results/<study> [--trials 1,2] [--cells CELL,...] [--results-dir runs]``:
re-run a published study, or a subset of it, on this machine, each run with its own recorded
command-line overrides (``overrides.yaml``), into ``runs/<study>``; then build that study's report,
which compares it with the published one seed for seed (``analysis.report`` finds the reference).

Runs that differ only in their trial are launched as one sweep (``-m trial=1,2 ...``), in the
published study's cell order; finished runs already in ``runs/<study>`` are skipped by the sweep
itself, so a stopped reproduction continues where it stopped. Bad input (no such study, a trial or
cell it does not hold, an imported table with no runnable runs) is one line and exit 2, before
any training.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from repeatability.records import artifacts
from repeatability.records.errors import RunDirError

# overrides that say where and how a run was launched, not what it computed
_WHERE = ("results_dir=", "hydra/launcher=", "hydra.", "cache_dir=", "claim_")


@dataclass(frozen=True)
class Sweep:
    """One launch: the overrides the runs share, and their trials."""

    overrides: tuple[str, ...]
    trials: tuple[int, ...]

    def argv(self, results_dir: str) -> list[str]:
        trials = ",".join(map(str, self.trials))
        return ["-m", f"trial={trials}", *self.overrides, f"results_dir={results_dir}"]


def _overrides(run: Path) -> tuple[list[str], int]:
    """The run's recorded overrides without its trial and launch placement, and its trial."""
    lines = [line[2:].strip() for line in (run / artifacts.OVERRIDES).read_text().splitlines()
             if line.startswith("- ")]
    kept = [o for o in lines if not o.startswith(("trial=", *_WHERE))]
    return kept, artifacts.parse_trial_dirname(run.name)


def plan(study: Path, trials: set[int] | None = None, cells: set[str] | None = None) -> list[Sweep]:
    """The sweeps that re-run ``study``'s selected runs (all when ``trials``/``cells`` are None).

    Raises:
        RunDirError: no such study, nothing selected, or a selected trial or cell it does not hold.
    """
    if not study.is_dir():
        raise RunDirError(f"{study}: no such published study (they are the folders under results/)")
    runs = [r for r in artifacts.iter_run_dirs(study) if (r / artifacts.OVERRIDES).is_file()]
    if not runs:
        raise RunDirError(f"{study}: no run records with overrides.yaml (an imported table cannot be re-run)")
    known_cells = {r.parent.name for r in runs}
    known_trials = {artifacts.parse_trial_dirname(r.name) for r in runs}
    if cells and cells - known_cells:
        raise RunDirError(f"{study}: no cell {', '.join(sorted(cells - known_cells))}; its cells are "
                          f"{', '.join(sorted(known_cells))}")
    if trials and trials - known_trials:
        raise RunDirError(f"{study}: no trial {', '.join(map(str, sorted(trials - known_trials)))}; its trials "
                          f"are {', '.join(map(str, sorted(known_trials)))}")
    grouped: dict[tuple[str, ...], list[int]] = {}
    for run in runs:
        if cells and run.parent.name not in cells:
            continue
        overrides, trial = _overrides(run)
        if trials and trial not in trials:
            continue
        grouped.setdefault(tuple(overrides), []).append(trial)
    return [Sweep(key, tuple(sorted(set(ts)))) for key, ts in grouped.items()]


def _split(value: str | None) -> set[str] | None:
    return {v.strip() for v in value.split(",") if v.strip()} if value else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m repeatability.reproduce", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", type=Path, help="a published study, e.g. results/default")
    parser.add_argument("--trials", help="comma-separated trial numbers (default: all)")
    parser.add_argument("--cells", help="comma-separated cell folder names (default: all)")
    parser.add_argument("--results-dir", default=artifacts.RUNS_ROOT, help="where the runs go (default: runs)")
    parser.add_argument("--no-report", action="store_true", help="run only; build no report")
    args = parser.parse_args(argv)
    try:
        trials = {int(t) for t in _split(args.trials) or ()} or None
    except ValueError:
        parser.exit(2, f"error: --trials {args.trials}: use comma-separated numbers, e.g. --trials 1,2\n")
    try:
        sweeps = plan(args.study, trials, _split(args.cells))
    except RunDirError as exc:
        parser.exit(2, f"error: {exc}\n")
    target = artifacts.study_dir(args.results_dir, args.study.resolve().name)
    if target.resolve() == args.study.resolve():
        parser.exit(2, f"error: --results-dir {args.results_dir} would write into the published study "
                       f"{args.study}; use another folder (default: runs)\n")
    n = sum(len(s.trials) for s in sweeps)
    print(f"reproducing {n} run(s) of {args.study} in {len(sweeps)} sweep(s) into {target}", file=sys.stderr)
    status = 0
    for sweep in sweeps:
        status = max(status, subprocess.call([sys.executable, "-m", "repeatability.run",
                                              *sweep.argv(args.results_dir)]))
    if status or args.no_report:
        return status
    return subprocess.call([sys.executable, "-m", "analysis.report", str(target), "--no-reference",
                            "--compare", str(args.study)])


if __name__ == "__main__":
    sys.exit(main())
