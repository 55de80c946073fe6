"""User-facing error types: bad input gets one of these, with a message that names
the file, line, field or tensor at fault. The CLI prints them as one line."""


class KardiaError(Exception):
    """Base class for mistakes in the user's input (files, configs, flags)."""


class ConfigError(KardiaError, ValueError):
    """A model or run configuration that cannot be honoured."""


class CheckpointError(KardiaError, ValueError):
    """A checkpoint that is missing, incomplete or inconsistent with its config."""


class DataError(KardiaError, ValueError):
    """A data record or file that fails validation."""


class MissingPackageError(KardiaError, ImportError):
    """An optional package that a requested feature needs is not installed."""


class TrainingHalted(KardiaError):
    """Too many non-finite updates in a row; the last checkpoint is left intact."""
