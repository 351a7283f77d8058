"""``python -m analysis.report results/<study> [--compare results/<other>] [--margin 0.01]
[--blowup-k 10] [--eval NAME]``: the study's report.

A study outside ``results/`` (a user's, e.g. ``runs/default``) whose name a published study
``results/<name>`` shares is compared with it automatically, seed for seed (``--no-reference``:
not); ``--compare`` (repeatable) adds a section with the other studies' cells next to this one's
(e.g. the paper's Tables 1–2, imported with ``python -m analysis.import_table``); ``--margin``
and ``--blowup-k`` set the equivalence margin and the blow-up factor
(:class:`analysis.config.AnalysisConfig`); ``--eval NAME`` reports each run's evaluation record
``evals/NAME.json`` (``python -m repeatability.rescore``) instead of its training perplexities.

Writes, under ``artifacts.report_dir(study)`` = ``<study>/_report/`` (or ``--out``):
``report.md``, a self-contained ``report.html`` (figures embedded as base64 PNG),
``figures/*.png`` and ``tables/*``
(``.csv`` full precision, ``.md``, ``.tex``), plus ``tables/runs.csv`` (every run, every
summary key). Prints the path of ``report.md`` on stdout and nothing else.

The files are written into a staging folder beside them and moved into place only once all are
written, ``report.md`` last: a build that fails or is killed midway leaves the previous report whole.

Exit codes: 0 report written (even when some runs are corrupted: they are listed in the
report's problems section); 1 the filesystem refused a write (full, over quota, read-only,
I/O error: one line names the file and the free space; the previous report is left whole);
2 bad input (no such directory, or no run directory in it).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from analysis.compute import results
from analysis.compute.results import Results
from analysis.config import AnalysisConfig
from analysis.load import Study, StudyError, load_study
from analysis.present import (
    prose,
    sections,
    sections_answer,
    sections_blowups,
    sections_edge,
    sections_runs,
    sections_survival,
    sections_tasks,
    sections_variance,
)
from analysis.present.document import Doc, render_html, render_markdown, write_figures
from analysis.present.formatting import write_table
from analysis.present.section import Section, Tables
from analysis.present.verdict_words import task_margin_text
from repeatability.records import artifacts, storage

log = logging.getLogger(__name__)

# The report: its sections in order (analysis.present.section.Section: what each computes, how it
# presents). The answer and its one figure come first; the learning-rate edge (present only when
# the study has an LR axis) and the time to blow-up (only in a horizon study) next; setup and
# environment last, as an appendix. A new section: its own module(s), and one entry here.
SECTIONS: tuple[Section, ...] = (
    sections_answer.ANSWER, sections_edge.LR_EDGE, sections_survival.SURVIVAL,
    sections.VERDICTS, sections.PERPLEXITY, sections_tasks.TASKS,
    sections_variance.SOURCES, sections_variance.ADAPTERS,
    sections.COMPARISONS, sections_blowups.BLOWUPS, sections_blowups.SIDE_BY_SIDE,
    sections_variance.TRIALS_NEEDED, sections_runs.LOSS, sections_runs.GENERATION,
    sections_variance.ABLATIONS, sections_runs.RESOURCES, sections_runs.NOT_AS_ASKED,
    sections_runs.PROBLEMS, sections.OVERVIEW)


def compute(study: Study, config: AnalysisConfig | None = None, others: Sequence[Study] = ()) -> Results:
    """Every number of the report, once: the core ones (:func:`analysis.compute.results.compute`),
    then each section's own (its ``compute``, in the order of :data:`SECTIONS`), kept in
    :attr:`Results.sections <analysis.compute.results.Results.sections>` under the section's name."""
    core = results.compute(study, config, others)
    return replace(core, sections={s.name: s.compute(core) for s in SECTIONS if s.compute is not None})


def build(study: Study, config: AnalysisConfig | None = None,
          others: Sequence[Study] = (), eval_name: str | None = None) -> tuple[Doc, Tables]:
    """Compute the study's numbers once (:func:`compute`), then present them: every section of
    :data:`SECTIONS`, in order, into one document."""
    config = config or AnalysisConfig()
    r = compute(study, config, others)
    doc = Doc(f"Repeatability report: {study.name}")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out: Tables = {}
    for section in SECTIONS:
        out |= section.render(doc, r)
    if eval_name:  # what "perplexity" means in this report: said in the answer, before any number
        said = (f"Held-out perplexities are those of the evaluation `{eval_name}` (`evals/{eval_name}.json`, "
                "written by `python -m repeatability.rescore`), not the training summaries'.")
        doc.blocks.insert(doc.blocks.index(("heading", (2, "Answer"))) + 1, ("para", said))
    # provenance goes last: how the report was made, then what the runs were installed from
    doc.para(f"Generated {stamp} by `python -m analysis.report`. Declared before the analysis: "
             f"equivalence margin ±{config.margin * 100:g}%, blow-up factor k = "
             f"{config.blowup_k:g}, α = {config.alpha:g}"
             + (f", task-score margin {task_margin_text(config)}." if len(sections_tasks.TASKS.of(r).spreads)
                else "."))
    lock_line = prose.lock_line(r.lock)
    if lock_line and not lock_line.startswith("WARNING"):  # a warning is in the Answer instead
        doc.para(lock_line)
    return doc, out


def write_report(study_path: str | Path, out_dir: str | Path | None = None,
                 config: AnalysisConfig | None = None,
                 compare: Sequence[str | Path] = (), eval_name: str | None = None) -> Path:
    """Load the study (and each of ``compare``), build the report (compute once, then present)
    and write every file; return ``report.md``'s path.

    Every file is written into a staging folder inside the output folder, then moved into
    place (:func:`_swap_in`): ``figures/`` and ``tables/`` are replaced whole, so no file of an
    earlier report survives next to the new one, and until the move the earlier report is whole.

    Raises:
        StudyError: no such study directory, or no run directory in it (either one).
        StorageFault: the output's filesystem is full, read-only or failing (nothing was replaced).
    """
    study = load_study(study_path, eval_name)
    others = [load_study(path) for path in compare]
    out = Path(out_dir) if out_dir else artifacts.report_dir(study.path)
    doc, tabs = build(study, config, others, eval_name)
    doc.csv = {caption: f"tables/{name}.csv" for name, (_, caption) in tabs.items()}
    with storage.writing(out):
        stage = _staging(out)
        try:
            tables_dir = stage / "tables"
            tables_dir.mkdir()
            for name, (table, caption) in tabs.items():
                write_table(table, tables_dir, name, caption, index=not _is_flat(table))
            study.runs.to_csv(tables_dir / "runs.csv", index=False)
            write_figures(doc, stage / "figures")
            (stage / "report.html").write_text(render_html(doc))
            (stage / "report.md").write_text(render_markdown(doc))
            _swap_in(stage, out)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    log.info("wrote %s (%d figures, %d tables)", out, len(doc.figures), len(tabs) + 1)
    return out / "report.md"


STAGING = ".staging-"  # <out>/.staging-XXXX/: a report being written (a killed build's is removed by the next)


def _staging(out: Path) -> Path:
    """A fresh staging folder inside ``out`` (one filesystem: the moves are renames), after
    removing any that a killed build left."""
    out.mkdir(parents=True, exist_ok=True)
    for left in out.glob(f"{STAGING}*"):
        shutil.rmtree(left, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=STAGING, dir=out))


def _swap_in(stage: Path, out: Path) -> None:
    """Move the staged report into ``out``: each folder by two renames (the old one into the
    staging folder, removed with it), each document by one atomic ``os.replace``, ``report.md``
    last. Only a kill during these renames (milliseconds, no writing) can mix two reports."""
    for name in ("figures", "tables"):
        if (out / name).exists():
            os.replace(out / name, stage / f".old-{name}")
        os.replace(stage / name, out / name)
    for name in ("report.html", "report.md"):
        os.replace(stage / name, out / name)


def _is_flat(table: pd.DataFrame) -> bool:
    """A frame whose index carries nothing (a plain RangeIndex) is written without it."""
    return isinstance(table.index, pd.RangeIndex) and table.index.name is None


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status (2 via ``parser.exit`` on bad input)."""
    parser = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", help="a study directory, e.g. results/default")
    parser.add_argument("--out", help="output folder (default: the contract's report_dir, "
                        "<study>/_report); its figures/ and tables/ are replaced")
    parser.add_argument("--compare", action="append", default=[], metavar="STUDY",
                        help="another study directory whose cells are shown next to this "
                        "study's (e.g. the paper's imported tables); repeatable")
    parser.add_argument("--no-reference", action="store_true",
                        help="do not compare with the published study of the same name (results/<name>)")
    parser.add_argument("--margin", type=float, default=AnalysisConfig.margin,
                        help="equivalence margin, relative (default 0.01 = ±1%%)")
    parser.add_argument("--task-margin", type=float, default=AnalysisConfig.task_margin,
                        help="equivalence margin of task scores, absolute (default 0.01 = ±1 point)")
    parser.add_argument("--blowup-k", type=float, default=AnalysisConfig.blowup_k,
                        help="a run blew up above k × the reference perplexity (default 10)")
    parser.add_argument("--eval", dest="eval_name", metavar="NAME",
                        help="report the held-out metrics of each run's evaluation NAME (evals/NAME.json, "
                        "from python -m repeatability.rescore) instead of its training summary's")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", force=True)
    try:
        config = AnalysisConfig(margin=args.margin, blowup_k=args.blowup_k, task_margin=args.task_margin)
    except ValueError as exc:  # a setting out of range, e.g. --margin 0
        parser.exit(2, f"error: {exc}\n")
    compare = list(args.compare)
    reference = None if args.no_reference else artifacts.published_reference(Path(args.study))
    if reference is not None and all(Path(c).resolve() != reference.resolve() for c in compare):
        compare.insert(0, str(reference))
        print(f"compared with the published study {reference}", file=sys.stderr)
    try:
        path = write_report(args.study, args.out, config, compare, args.eval_name)
    except StudyError as exc:
        parser.exit(2, f"error: {exc}\n")
    except storage.StorageFault as fault:
        parser.exit(1, f"error: {fault}; the previous report is left as it was; free space there and run "
                       "this again\n")
    print(path)  # the one line of stdout: where the report is
    return 0


if __name__ == "__main__":
    sys.exit(main())
