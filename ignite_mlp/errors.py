"""The one exception type that means "the user asked for something we cannot do"."""


class UserError(ValueError):
    """A problem with the user's input: bad option, missing data, corrupt file.

    The CLI prints its message as one line and exits with status 2, no traceback,
    so the message must name the problem *and* the fix.

    >>> str(UserError("--lr must be > 0 (got -1.0); pass a positive learning rate such as 1e-3"))
    '--lr must be > 0 (got -1.0); pass a positive learning rate such as 1e-3'
    """


class TrainingInterrupted(Exception):
    """Ctrl-C stopped a run; a checkpoint of where it stopped was written (CLI exit status 130)."""

    def __init__(self, run_dir: str, checkpoint: str) -> None:
        super().__init__(
            f"interrupted: checkpoint saved to {checkpoint}; resume with: ignite-mlp train --resume {run_dir}"
        )
        self.run_dir = run_dir
        self.checkpoint = checkpoint

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # Pickled from a training process to the launcher: rebuild from both fields, not the message.
        return (TrainingInterrupted, (self.run_dir, self.checkpoint))


class CudaError(RuntimeError):
    """A CUDA failure, with the tutorial's advice for getting an accurate error."""


class RankError(RuntimeError):
    """A process of a multi-process run failed; the message names its rank and carries its
    error and traceback. The other processes were stopped (CLI exit status 1)."""
