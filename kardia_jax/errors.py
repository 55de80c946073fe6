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


class Preempted(Exception):  # noqa: N818 - a stop that was asked for, not a failure
    """A SIGTERM was agreed by every process and the driver has saved (or finished
    writing) at `step` (kardia_jax/train/preemption.py). The CLI prints the message
    and exits 0; a pipeline leaves the stage unmarked, so the rerun resumes it."""

    def __init__(self, stage: str, step: int, done: str | None = None):
        self.stage, self.step = stage, step
        super().__init__(f"SIGTERM: {done or f'saved step {step}'} ({stage}); exiting")
