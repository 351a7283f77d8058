"""Parallel trials vs sequential on the same machine (a benchmark, never a timed test).

    .venv/bin/python bench/bench_parallel.py [--trials 4] [--steps 10] [--out DIR] [-- OVERRIDE ...]

Runs the same short SmolLM2 trials twice through the real command line: once with Hydra's
basic launcher (one after another, one process, every core's threads) and once with
``hydra/launcher=local_parallel hydra.launcher.n_jobs=2`` (two worker processes, each given
cores // 2 torch threads by the thread budget). Prints both wall times and their ratio as one
JSON line with each layout's runs per hour, and checks whether both sweeps produced the same adapters
(same seeds; 1 vs 2 threads may move the bits, as it does in the explain-horizon protocol).
Overrides after ``--`` go to both sweeps, e.g. the horizon protocol's shape:
``-- experiments=explain_edge train.lr=2e-4 optim=paged_adamw_8bit_bnb041`` (measured 2026-12-03 on
the 2-core AMD EPYC with 60 traced steps: 281 s one at a time with 2 threads vs 141 s side by side).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _sweep(results: Path, study: str, trials: int, steps: int, extra: Sequence[str]) -> float:
    args = [sys.executable, "-m", "repeatability.run", "-m", f"trial={','.join(map(str, range(1, trials + 1)))}",
            f"study={study}", f"results_dir={results}", f"train.max_steps={steps}", "train.eval_every=0",
            "train.checkpoint_every=0", "eval.max_examples=20", "eval.max_new_tokens=8", "eval.base_perplexity=false",
            *extra]
    start = time.perf_counter()
    subprocess.run(args, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def _adapters(results: Path, study: str) -> list[str]:
    sys.path.insert(0, str(ROOT))
    from repeatability.records import artifacts

    return [artifacts.read_summary(p)["adapter"]["sha256"] for p in artifacts.iter_run_dirs(results / study)]


def bench_layouts(trials: int, steps: int, results: Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Both layouts on the same sweep (``trials`` trials of ``steps`` steps, plus ``overrides``),
    after a 1-step warm-up run: wall times, runs per hour each, and whether the adapters agree."""
    # warm the model conversion and the page cache so neither sweep pays for them
    _sweep(results, "warm", 1, 1, overrides)
    sequential = _sweep(results, "sequential", trials, steps, overrides)
    parallel = _sweep(results, "parallel", trials, steps, [*overrides, "hydra/launcher=local_parallel",
                                                           "hydra.launcher.n_jobs=2", "determinism.threads=1"])
    runs = len(_adapters(results, "sequential"))
    same = _adapters(results, "sequential") == _adapters(results, "parallel")
    return {"parallel_over_sequential": round(parallel / sequential, 3), "sequential_s": round(sequential, 1),
            "runs_per_hour_1x2": round(3600 * runs / sequential, 1),
            "runs_per_hour_2x1": round(3600 * runs / parallel, 1),
            "parallel_s": round(parallel, 1), "runs": runs, "steps": steps, "n_jobs": 2,
            "cores": len(os.sched_getaffinity(0)), "same_adapters": same, "overrides": list(overrides),
            "results": str(results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for both sweeps (after --)")
    a = parser.parse_args()
    results = a.out or Path(tempfile.mkdtemp(prefix="bench-parallel-"))
    print(json.dumps(bench_layouts(a.trials, a.steps, results, a.overrides)))


if __name__ == "__main__":
    main()
