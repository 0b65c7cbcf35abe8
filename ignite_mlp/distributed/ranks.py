"""Who does what inside a run of several processes: the rank helpers :func:`ignite_mlp.run.training.train` uses.

Every rank runs every collective operation (gradient all-reduce, metric reduction, checkpoint
state) in the same order, and only rank 0 writes files or prints. In one process every helper
here is a no-op or the obvious answer (rank 0 of 1). How the processes are started is
:mod:`ignite_mlp.distributed.launcher`'s business, not this module's.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from torch import nn

from ignite_mlp.config.constraints import require_cuda
from ignite_mlp.errors import UserError

# Variables torchrun (and torch.distributed.launch) set for each process it starts.
_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return idist.get_rank()


def world_size() -> int:
    """How many processes train together (1 when not distributed)."""
    return idist.get_world_size()


def is_main() -> bool:
    """True on the process that writes files and prints: rank 0, or the only process."""
    return idist.get_rank() == 0


def under_torchrun() -> bool:
    """True when torchrun started this process as one of several."""
    return all(v in os.environ for v in _TORCHRUN_VARIABLES) and int(os.environ["WORLD_SIZE"]) > 1


def choose_backend(backend: str, device_spec: str) -> str:
    """``auto``: NCCL when the processes train on CUDA, gloo otherwise.

    >>> choose_backend("auto", "cpu")
    'gloo'
    """
    cuda = rank_device_type(device_spec) == "cuda"
    if backend == "auto":
        return "nccl" if cuda else "gloo"
    if backend == "nccl" and not cuda:
        raise UserError("--backend nccl connects GPUs only; use --backend gloo (or auto) to train on CPU")
    if backend == "nccl":
        require_cuda("--backend nccl", fix="use --backend gloo or auto")
    return backend


def rank_device_type(spec: str) -> str:
    """``cuda`` or ``cpu``: where the ranks will train, known before any process starts.

    >>> rank_device_type("cpu")
    'cpu'
    """
    return "cpu" if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()) else "cuda"


def rank_device(spec: str) -> torch.device:
    """This rank's device when several processes train: its local rank's GPU, or the CPU.

    Only called in a distributed run; ``cuda:N`` would put every process on one GPU.
    """
    if rank_device_type(spec) == "cpu":
        return torch.device("cpu")
    if spec not in ("auto", "cuda"):
        raise UserError(f"--device {spec} pins one GPU; with several processes use --device cuda or auto")
    require_cuda(f"--device {spec}")
    return torch.device("cuda", idist.get_local_rank())


def backend() -> str | None:
    """The process group's backend (gloo, nccl), or None when not distributed."""
    return idist.backend()


def wrap(
    model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The model and optimiser the trainer steps: Ignite's ``auto_model`` (DistributedDataParallel,
    which averages gradients over the ranks) and ``auto_optim`` across ranks; both unchanged in
    one process.

    BatchNorm layers normalise over the *global* batch, as in one process, and so keep the same
    running statistics on every rank: on CUDA through ``auto_model(..., sync_bn=True)`` (torch's
    ``SyncBatchNorm``, which runs on GPUs only), on the CPU through :class:`GlobalBatchNorm1d`.
    The layers are replaced inside ``model`` itself, keeping their parameters, buffers and names,
    so checkpoints and validation use the same model.

    On a CUDA machine asked to train on the CPU, ``auto_model`` would move the model to the GPU;
    there the model is wrapped in ``DistributedDataParallel`` as it is, which is what
    ``auto_model`` does on a machine without CUDA.
    """
    if idist.get_world_size() == 1:
        return model, optimizer
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if has_bn and device.type == "cpu":
        to_global_batchnorm(model)
    if device == idist.device():
        wrapped = idist.auto_model(model, sync_bn=has_bn and device.type == "cuda")
    else:
        wrapped = nn.parallel.DistributedDataParallel(model)
    return wrapped, idist.auto_optim(optimizer)


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """``BatchNorm1d`` over the batch of every rank together, for CPU processes (gloo).

    In training, each rank sums its share's values and squares, one differentiable all-reduce
    adds the ranks' sums (its backward adds the ranks' gradients, as torch's ``SyncBatchNorm``
    does), and every rank normalises with the global mean and variance and updates the same
    running statistics. In evaluation, and in one process, it is ``BatchNorm1d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or idist.get_world_size() == 1:
            return super().forward(x)
        xf = x.float()  # sums of squares in bf16 would lose the variance
        channels = xf.shape[1]
        count = torch.full((1,), float(xf.shape[0]), device=xf.device)
        totals = summed_over_ranks(torch.cat([xf.sum(0), (xf * xf).sum(0), count]))
        n = totals[-1]
        mean = totals[:channels] / n
        var = (totals[channels : 2 * channels] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * n / (n - 1).clamp_min(1), m)
        out = (xf - mean) * torch.rsqrt(var + self.eps)
        return out * self.weight + self.bias if self.affine else out


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose gradient is the ranks' gradients summed: each rank's input feeds
    every rank's output. torch's ``torch.distributed.nn.functional.all_reduce`` does the same and
    is deprecated (it warns on every run)."""

    @staticmethod
    def forward(ctx: object, tensor: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        out = tensor.clone(memory_format=torch.contiguous_format)
        torch.distributed.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        return _SumOverRanks.apply(grad)


def summed_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the ranks, differentiably (the backward sums the gradients too)."""
    return _SumOverRanks.apply(tensor)


def to_global_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm1d`` in ``model`` (in place) by a :class:`GlobalBatchNorm1d` that
    shares its parameters and buffers; returns ``model``."""
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm1d:
            replacement = GlobalBatchNorm1d(child.num_features, child.eps, child.momentum, child.affine)
            replacement.track_running_stats = child.track_running_stats
            # Share, not copy: the model's state dict (and so its checkpoints) stays the same.
            replacement._parameters, replacement._buffers = child._parameters, child._buffers
            replacement.train(child.training)
            setattr(model, name, replacement)
        else:
            to_global_batchnorm(child)
    return model


def main_first() -> contextlib.AbstractContextManager[None]:
    """Rank 0 of each machine goes first (then the others): it downloads and decodes the data
    and fills the cache, which the others then read instead of decoding it again."""
    if idist.get_world_size() == 1:
        return contextlib.nullcontext()
    return idist.one_rank_first(rank=0, local=True)


def attach_agreement(trainer: Engine, stop_signalled: Callable[[], bool]) -> Callable[[], bool]:
    """Make all ranks decide alike after every iteration; returns "have the ranks agreed to stop?".

    One all-reduce per iteration carries the batch loss and whether this rank got Ctrl-C. After
    it, ``state.output["loss"]`` is the mean over the ranks, the global batch's loss, so the NaN
    check, the progress bar and TensorBoard see the same value everywhere and a NaN on one rank
    stops all of them at the same iteration (one rank stopping alone would leave the others
    waiting in the next all-reduce). Attach before any handler that reads the loss or stops the
    trainer, after the training metrics (they keep each rank's own loss and reduce it at the
    epoch's end).
    """
    agreed = [False]
    size = idist.get_world_size()

    def agree(engine: Engine) -> None:
        loss = engine.state.output["loss"].detach().float().reshape(())
        flags = torch.stack([loss, torch.tensor(float(stop_signalled()), device=loss.device)])
        flags = idist.all_reduce(flags)
        engine.state.output["loss"] = flags[0] / size
        agreed[0] = bool(flags[1] > 0)

    trainer.add_event_handler(Events.ITERATION_COMPLETED, agree)
    return lambda: agreed[0]


def set_threads(device: torch.device) -> None:
    """Share the CPU cores between this machine's processes, unless OMP_NUM_THREADS says otherwise:
    two processes with a thread per core each would fight over the cores."""
    if device.type != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(max(1, cores // idist.get_nproc_per_node()))
