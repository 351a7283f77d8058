"""Where each run's numbers came from: the project commit, whether the tree was dirty, the
numerics fingerprint (summary ``numerics``: the base model's loss on a fixed canary batch before
the first update) and the torch thread count (the worker layout: two workers × 1 thread vs one ×
2 threads; it moved bits near the LR edge, not in the default protocol). Runs of one cell are
comparable only when these agree; a study that mixes them is flagged in the Answer, naming the
runs (:func:`mix`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from analysis.load import column, is_imported

COLUMNS = ("cell", "trial", "commit", "dirty", "fingerprint", "threads")
NOT_RECORDED = "not recorded"


def runs_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run of the harness (imported runs aside): commit (first 9), dirty, fingerprint
    (the canary loss as ``float.hex``; "not recorded" before schema 6), torch threads."""
    own = runs[~is_imported(runs)]
    commit = column(own, "environment.git.commit").map(lambda c: str(c)[:9] if pd.notna(c) else NOT_RECORDED)
    dirty = column(own, "environment.git.dirty")
    prints = column(own, "numerics.canary_loss_hex").map(lambda h: h if pd.notna(h) else NOT_RECORDED)
    threads = column(own, "determinism.torch_num_threads").map(lambda t: str(int(t)) if pd.notna(t) else NOT_RECORDED)
    return pd.DataFrame({"cell": own["cell"], "trial": own["trial"], "commit": commit,
                         "dirty": dirty.map(lambda d: bool(d) if pd.notna(d) else None), "fingerprint": prints,
                         "threads": threads},
                        columns=list(COLUMNS)).reset_index(drop=True)


def by_fingerprint(table: pd.DataFrame) -> pd.DataFrame:
    """Per cell and fingerprint: the runs' trials, commits and dirty count."""
    rows = []
    for (cell, fp), group in table.groupby(["cell", "fingerprint"], sort=True):
        rows.append({"cell": cell, "fingerprint": fp, "runs": len(group),
                     "trials": ",".join(str(t) for t in sorted(group["trial"])),
                     "commits": ", ".join(sorted(set(group["commit"]))),
                     "dirty_runs": int(group["dirty"].fillna(False).astype(bool).sum())})
    return pd.DataFrame(rows, columns=["cell", "fingerprint", "runs", "trials", "commits", "dirty_runs"])


@dataclass(frozen=True)
class Mix:
    """What a study mixes: runs per commit, the dirty runs, cells with more than one fingerprint, and
    runs per torch thread count."""

    commits: dict[str, int]
    dirty: list[tuple[str, int]]
    split_cells: dict[str, int]  # cell -> distinct recorded fingerprints (> 1)
    threads: dict[str, int] = field(default_factory=dict)  # torch threads -> runs (recorded ones)

    @property
    def mixed(self) -> bool:
        return len(self.commits) > 1 or bool(self.dirty) or bool(self.split_cells) or len(self.threads) > 1


def mix(table: pd.DataFrame) -> Mix:
    """The study's commits (with run counts), dirty runs (cell, trial), cells whose recorded
    fingerprints differ, and its runs per recorded torch thread count."""
    commits = table["commit"].value_counts().sort_index().to_dict()
    dirty = [(r["cell"], int(r["trial"])) for _, r in table.iterrows() if r["dirty"] is True]
    recorded = table[table["fingerprint"] != NOT_RECORDED]
    split = {cell: n for cell, n in recorded.groupby("cell")["fingerprint"].nunique().items() if n > 1}
    threads = table.loc[table["threads"] != NOT_RECORDED, "threads"].value_counts().sort_index().to_dict()
    return Mix(commits={str(k): int(v) for k, v in commits.items()}, dirty=dirty, split_cells=split,
               threads={str(k): int(v) for k, v in threads.items()})
