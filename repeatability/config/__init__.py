"""Config: the typed schema Hydra composes into (the groups that make a cell, the run-wide groups,
the whole run and its registration), checked before any compute, with the declarations it chooses
from (the task evaluators, the seeded sources) and its error. The bottom layer: it imports no
other part of the harness."""
