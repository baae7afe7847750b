"""The tool's own error types: the CLI turns each into one clear message and an exit code."""

from __future__ import annotations


class DefectdetError(Exception):
    """Base class; ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class DataError(DefectdetError):
    """Input data that cannot be used (or any problem at all under ``--strict``)."""

    exit_code = 2


class ConfigError(DefectdetError):
    """Options or config files that do not make sense together."""

    exit_code = 2


class CheckpointError(DefectdetError):
    """A checkpoint that is missing, corrupt, or carries more than tensors and plain data."""

    exit_code = 3


class OutputExistsError(DefectdetError):
    """An output that would silently overwrite an earlier one."""

    exit_code = 4
