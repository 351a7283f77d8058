"""Analysis of repeatability studies: load (through the run-directory contract) → stats → tables →
plots → report.

Every run directory is read through :mod:`repeatability.artifacts`; nothing here opens a run
file by name. The entry point is ``python -m analysis.report results/<study>``.
"""

from analysis.load import Problem, Study, StudyError, load_study

__all__ = ["Problem", "Study", "StudyError", "load_study"]
