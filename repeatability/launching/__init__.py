"""Launching a sweep: preflight checks, the sweep loop and its ledger, run claims, the SLURM tier,
preemption, the launcher registry and the thread budget it gives each trial."""
