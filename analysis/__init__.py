"""Analysis of repeatability studies, in layers: load (:mod:`analysis.load`, through the
run-directory contract) → compute (:mod:`analysis.compute.results`: every number once, from the pure
modules stats, blowups, equivalence, variance, anova, adapter_distance, curves, power,
ablations, generations, tables) → present (the ``sections*`` modules: tables, figures
(:mod:`analysis.present.plots`), sentences (:mod:`analysis.present.prose`)) → :mod:`analysis.report`.

Every run directory is read through :mod:`repeatability.records.artifacts`; nothing here opens a run
file by name. The entry point is ``python -m analysis.report results/<study>``; a published
table becomes a study with ``python -m analysis.import_table FILE.csv --study NAME``.
"""

from analysis.load import Problem, Study, StudyError, load_study

__all__ = ["Problem", "Study", "StudyError", "load_study"]
