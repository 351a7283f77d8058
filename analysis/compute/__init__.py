"""Compute: every number of a report, once (:mod:`analysis.compute.results`), from the pure modules here."""
