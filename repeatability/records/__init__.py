"""Records: the run-directory contract and its files (integrity, adapters, checkpoints, evaluations),
the typed summary and its schema, the metric registry, environment and lock, trackers."""
