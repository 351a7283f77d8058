"""Analysis of repeatability studies: load (through the run-directory contract) → stats → tables →
plots → report.

Every run directory is read through :mod:`repeatability.artifacts`; nothing here opens a run
file by name. The entry point is ``python -m analysis.report results/<study>``; a published
table becomes a study with ``python -m analysis.import_table FILE.csv --study NAME``.
"""

from analysis.load import Problem, Study, StudyError, load_study

__all__ = ["Problem", "Study", "StudyError", "load_study"]
