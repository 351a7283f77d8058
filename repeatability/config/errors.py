"""User-facing errors: one line naming the problem and the fix, raised before any training."""


class ConfigError(Exception):
    """Bad input (config value, missing file, unreachable model or dataset, empty split).

    The message is a single line a user can act on; the sweep prints it and never starts
    training for that run.
    """
