"""Run-record errors (bad input is :class:`repeatability.config.errors.ConfigError`)."""


class RunDirError(Exception):
    """A run directory that cannot be read or would be overwritten (contract violation)."""
