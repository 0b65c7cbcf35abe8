"""Several processes: the launcher (one process, ``--nproc-per-node`` or a torchrun rank) and the
rank helpers a run uses (rank, device per rank, the model's wrapper, the stop agreement)."""

from ignite_mlp.distributed.launcher import launch

__all__ = ["launch"]
