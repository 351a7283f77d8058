"""Hydra launcher plugins of the repeatability harness (Hydra only loads plugins from the
``hydra_plugins`` namespace); the logic lives in :mod:`repeatability.launching.slurm`."""
