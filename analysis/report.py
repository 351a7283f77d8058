"""``python -m analysis.report results/<study>``: the study's report.

Writes, under ``artifacts.report_dir(study)`` = ``<study>/_report/`` (or ``--out``):
``report.md``, a self-contained ``report.html`` (figures embedded as base64 PNG),
``figures/*.png`` and ``tables/*``
(``.csv`` full precision, ``.md``, ``.tex``), plus ``tables/runs.csv`` (every run, every
summary key). Prints the path of ``report.md`` on stdout and nothing else.

Exit codes: 0 report written (even when some runs are corrupted: they are listed in the
report's problems section); 2 bad input (no such directory, or no run directory in it).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from analysis import sections, sections_runs, sections_variance
from analysis.document import Doc, render_html, render_markdown, write_figures
from analysis.load import Study, StudyError, load_study
from analysis.tables import write_table
from repeatability import artifacts

log = logging.getLogger(__name__)

SECTIONS = (sections.overview, sections.verdicts, sections.perplexity,
            sections_variance.variance_sources, sections_variance.adapter_divergence,
            sections.comparisons, sections_variance.trials_needed, sections_runs.loss,
            sections_runs.generation, sections_variance.ablations, sections_runs.resources,
            sections_runs.not_as_asked, sections_runs.problems)


def build(study: Study) -> tuple[Doc, sections.Tables]:
    """Every section of :data:`SECTIONS`, in order, into one document."""
    doc = Doc(f"Repeatability report: {study.name}")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    doc.para(f"Generated {stamp} by `python -m analysis.report`.")
    out: sections.Tables = {}
    for section in SECTIONS:
        out |= section(doc, study)
    return doc, out


def write_report(study_path: str | Path, out_dir: str | Path | None = None) -> Path:
    """Load the study, build the report and write every file; return ``report.md``'s path.

    ``figures/`` and ``tables/`` under the output folder are replaced, so no file of an
    earlier report survives next to the new one.

    Raises:
        StudyError: no such study directory, or no run directory in it.
    """
    study = load_study(study_path)
    out = Path(out_dir) if out_dir else artifacts.report_dir(study.path)
    doc, tabs = build(study)
    for old in (out / "figures", out / "tables"):  # a previous report's files must not linger
        if old.is_dir():
            shutil.rmtree(old)
    tables_dir = out / "tables"
    for name, (table, caption) in tabs.items():
        write_table(table, tables_dir, name, caption, index=not _is_flat(table))
    study.runs.to_csv(tables_dir / "runs.csv", index=False)
    write_figures(doc, out / "figures")
    md = out / "report.md"
    md.write_text(render_markdown(doc))
    (out / "report.html").write_text(render_html(doc))
    log.info("wrote %s (%d figures, %d tables)", out, len(doc.figures), len(tabs) + 1)
    return md


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
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        path = write_report(args.study, args.out)
    except StudyError as exc:
        parser.exit(2, f"error: {exc}\n")
    print(path)  # the one line of stdout: where the report is
    return 0


if __name__ == "__main__":
    sys.exit(main())
