"""Batches from memory: :class:`TensorLoader` and the normalisation it applies.

The images stay uint8 where they are (a memory-mapped data file on the host, or one copy on
the GPU); each batch is gathered, converted and normalised as whole-batch tensor ops.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from ignite_mlp.config.constraints import per_process_batch
from ignite_mlp.data.augment import Mix
from ignite_mlp.errors import UserError


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units, computed in chunks.

    >>> x = torch.tensor([0, 255], dtype=torch.uint8).reshape(2, 1, 1, 1)
    >>> channel_stats(x)
    ([0.5], [0.5])
    """
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for i in range(0, len(images), chunk):
        block = images[i : i + chunk].to(torch.float64).div_(255).transpose(0, 1).flatten(1)
        total += block.sum(1)
        squares += (block * block).sum(1)
    count = images.numel() / images.shape[1]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt()
    return [round(v, 6) for v in mean.tolist()], [round(v, 6) for v in std.tolist()]


def normalization(mean: Sequence[float], std: Sequence[float], channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and shift so that ``uint8 * scale + shift == (x / 255 - mean) / std``, per channel.

    >>> scale, shift = normalization([0.5], [0.5], 3)
    >>> (torch.tensor([0.0, 255.0]) * scale[0, 0, 0, 0] + shift[0, 0, 0, 0]).tolist()
    [-1.0, 1.0]
    """
    for name, values in (("--mean", mean), ("--std", std)):
        if len(values) not in (1, channels):
            raise UserError(
                f"{name} has {len(values)} values but the images have {channels} channels; give 1 or {channels}"
            )
    m = torch.tensor(list(mean), dtype=torch.float32).expand(channels).reshape(1, channels, 1, 1)
    s = torch.tensor(list(std), dtype=torch.float32).expand(channels).reshape(1, channels, 1, 1)
    return 1.0 / (255.0 * s), -m / s


def denormalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo the normalisation: float ``(N, C, H, W)`` batches back to their uint8 pixels.

    >>> pixels = torch.tensor([0, 128, 255], dtype=torch.uint8).reshape(1, 3, 1, 1)
    >>> scale, shift = normalization([0.5], [0.5], 3)
    >>> denormalize(pixels * scale + shift, [0.5], [0.5]).flatten().tolist()
    [0, 128, 255]
    """
    scale, shift = (t.to(x.device) for t in normalization(mean, std, x.shape[1]))
    # Rounding recovers the exact pixel: normalising moved it by far less than half a step.
    return ((x - shift) / scale).round_().clamp_(0, 255).to(torch.uint8)


# The share of a GPU's free memory the uint8 images may take and still move onto it; the rest
# stays for the model, its activations and the normalised validation copy.
RESIDENT_SHARE = 0.5


def fits_on_device(nbytes: int, device: torch.device) -> bool:
    """Do ``nbytes`` of images move onto ``device``? Always on the CPU (host memory is where they
    are mapped); on CUDA when they take at most :data:`RESIDENT_SHARE` of its free memory.

    >>> fits_on_device(10**12, torch.device("cpu"))
    True
    """
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= RESIDENT_SHARE * free


class TensorLoader:
    """Batches ``(float images, labels)`` straight from a uint8 tensor, without per-sample work.

    Each epoch gets a fresh shuffle seeded by ``(seed, epoch)``, so a resumed run sees exactly
    the order an uninterrupted run would. Normalisation is a whole-batch tensor op: no
    per-sample Python.

    ``buffers=k`` writes batches into ``k`` recycled float buffers instead of fresh tensors:
    allocating a fresh 3 MB batch each step costs page faults and cold caches worth a third of
    the data time. A yielded batch then stays valid only while the next ``k - 1`` are drawn,
    which suits a training loop (the trainer uses 3); ``clone()`` a batch to keep it longer.

    Float ``images`` count as prepared already (whitened, see :mod:`ignite_mlp.data.whitening`): they
    are served as they are, augmented but not normalised. ``mix(batch, labels, generator)``
    mixes each normalised training batch and turns its labels into class probabilities
    (:func:`ignite_mlp.data.augment.make_mix`), from the same generator as ``augment``.

    ``augment(uint8_batch, generator)`` transforms each training batch before normalisation;
    its generator is seeded by ``(seed, epoch, batch)``, so a resumed run augments alike.

    ``keep_normalized=True`` (not with ``augment``) normalises the images once, on the first
    pass, into a float copy (4 bytes per input value) and serves batches from it: views of it
    without shuffling, a gather from it with. Validation images never change, so normalising
    them again each epoch would be wasted work. (For shuffled training data the copy saves
    little: gathering floats moves four times the bytes of gathering uint8.)

    ``resident`` says where the uint8 images live while batches are drawn: on the training
    device (one copy, made once; on CUDA batches then never cross the bus), or where they are
    (the memory-mapped data file on the host), each batch being gathered there and copied
    over through a pinned buffer. The default, None, keeps them resident when
    :func:`fits_on_device`. ``keep_normalized`` applies to resident images only.

    ``rank`` and ``world_size`` make this the loader of one process of a data-parallel run.
    Every rank draws the same permutation for ``(seed, epoch)`` and takes every
    ``world_size``-th sample of it, starting at its rank; ``batch_size`` stays the *global*
    batch and each rank yields ``batch_size // world_size`` of it (it must divide evenly). Rank
    r's batch i is then the part of the single-process batch i at positions r, r + world_size,
    ..., so the ranks together step through exactly the batches one process would. With
    ``even_shards=True`` (training: every rank must take the same number of steps) the last
    ``N % world_size`` samples of each epoch's order are left out; with ``False``
    (validation, where no rank waits on another per batch) every sample goes to exactly one
    rank and shards differ by at most one sample.

    >>> images = torch.arange(6, dtype=torch.uint8).reshape(6, 1, 1, 1)
    >>> loader = TensorLoader(images, torch.arange(6), batch_size=4, mean=[0.0], std=[1 / 255])
    >>> [y.tolist() for _, y in loader]
    [[0, 1, 2, 3], [4, 5]]
    >>> len(loader)
    2
    >>> [[y.tolist() for _, y in TensorLoader(images, torch.arange(6), 4, [0.0], [1 / 255], rank=r, world_size=2)]
    ...  for r in (0, 1)]
    [[[0, 2], [4]], [[1, 3], [5]]]
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        shuffle: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
        drop_last: bool = False,
        buffers: int = 0,
        keep_normalized: bool = False,
        augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
        mix: Mix | None = None,
        rank: int = 0,
        world_size: int = 1,
        even_shards: bool = True,
        resident: bool | None = None,
    ) -> None:
        if not (images.dtype == torch.uint8 or images.is_floating_point()) or images.ndim != 4:
            raise ValueError(f"images must be uint8 or float (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.device = torch.device(device)
        self.resident = fits_on_device(images.numel(), self.device) if resident is None else resident
        # Resident: one copy on the device, made once (none on the CPU: the mapping is used as it is).
        self.images = images.to(self.device) if self.resident else images
        self.labels = labels.to(self.device)
        self._staging: list[tuple[torch.Tensor, Any]] = []  # pinned host buffers, when not resident
        # What this rank yields; the ranks' batches together make the global ``batch_size``.
        self.batch_size = per_process_batch(batch_size, world_size)
        self.rank, self.world_size = rank, world_size
        n = len(labels)
        # The positions of each epoch's order that are used at all (see the class docstring).
        self._used = n - n % world_size if even_shards else n
        self._shard_size = len(range(rank, self._used, world_size))
        # Without shuffling, the shard is a fixed strided view (the whole tensor for one process).
        self._shard_images = self.images[rank : self._used : world_size]
        self._shard_labels = self.labels[rank : self._used : world_size]
        # Augmentation seeds: one process keeps its (seed, epoch, batch) key; ranks add theirs,
        # so they do not draw the same random numbers for different images.
        self._augment_key = (rank,) if world_size > 1 else ()
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        if keep_normalized and augment is not None:
            raise ValueError("keep_normalized serves the images as they are; it cannot be combined with augment")
        self.buffers = buffers
        self.augment = augment
        self.mix = mix
        self.prepared = images.is_floating_point()  # whitened already: no normalisation
        self.epoch = 1
        self.start = 0
        self.scale, self.shift = (t.to(self.device) for t in normalization(mean, std, images.shape[1]))
        self.keep_normalized = keep_normalized and self.resident
        self._normalized: torch.Tensor | None = None  # made on the first pass

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Choose which epoch's shuffle the next pass uses, and the batch it starts at
        (non-zero only when a run resumes mid-epoch). The trainer calls this each epoch
        (:func:`ignite_mlp.handlers.epochs.attach_epoch_shuffle`)."""
        if not 0 <= start < max(len(self), 1):
            raise ValueError(f"start batch {start} outside this epoch's {len(self)} batches")
        self.epoch = epoch
        self.start = start

    def __len__(self) -> int:
        n = self._shard_size
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _generator(self, *key: int, device: torch.device | None = None) -> torch.Generator:
        """A generator seeded by ``(seed, *key)``: same key, same random numbers."""
        state = np.random.SeedSequence([self.seed, *key]).generate_state(1, dtype=np.uint64)
        return torch.Generator(device=device or self.device).manual_seed(int(state[0] % (2**63)))

    def permutation(self, epoch: int) -> torch.Tensor:
        """The sample order of ``epoch``: a pure function of (seed, epoch)."""
        generator = self._generator(epoch, device=torch.device("cpu"))
        return torch.randperm(len(self.labels), generator=generator).to(self.device)

    def _from_host(self, rows: torch.Tensor | slice, slot: int) -> torch.Tensor:
        """Images ``rows`` (indices into all images, or a slice of this rank's shard), gathered
        on the host into staging buffer ``slot`` and copied to the device. On CUDA the buffer is
        pinned and the copy asynchronous; the buffer's next use waits for that copy."""
        n = len(range(self._shard_size)[rows]) if isinstance(rows, slice) else len(rows)
        if len(self._staging) <= slot:
            cuda = self.device.type == "cuda"
            shape = (min(self.batch_size, self._shard_size), *self.images.shape[1:])
            buffer = torch.empty(shape, dtype=self.images.dtype, pin_memory=cuda)
            self._staging.append((buffer, torch.cuda.Event() if cuda else None))
        buffer, copied = self._staging[slot]
        if copied is not None:
            copied.synchronize()
        staged = buffer[:n]
        if isinstance(rows, slice):
            staged.copy_(self._shard_images[rows])
        else:
            torch.index_select(self.images, 0, rows, out=staged)
        x = staged.to(self.device, non_blocking=True)
        if copied is not None:
            copied.record()
        return x

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # A generator: the permutation is drawn at the first next(), after the trainer's
        # EPOCH_STARTED handler has set the epoch, however early the engine calls iter().
        # Every rank draws the whole permutation and keeps its own positions of it.
        order = self.permutation(self.epoch)[self.rank : self._used : self.world_size] if self.shuffle else None
        host_order = order.cpu() if order is not None and not self.resident else None  # once per epoch
        if self.keep_normalized and self._normalized is None and not self.prepared:
            # A shuffled rank gathers from the whole set; an ordered one reads its shard only.
            self._normalized = self._normalize_all(self.images if self.shuffle else self._shard_images)
        start, self.start = self.start, 0  # a resume offset applies to one pass only
        # No batch is larger than the shard: a --batch-size beyond it must not size the buffers.
        shape = (min(self.batch_size, self._shard_size), *self.images.shape[1:])
        ring = [torch.empty(shape, device=self.device) for _ in range(self.buffers)]
        for i in range(start, len(self)):
            lo, hi = i * self.batch_size, min((i + 1) * self.batch_size, self._shard_size)
            out = ring[i % len(ring)][: hi - lo] if ring else None
            if order is None:
                y = self._shard_labels[lo:hi]
                if self._normalized is not None:
                    yield self._normalized[lo:hi], y
                    continue
                x = self._shard_images[lo:hi] if self.resident else self._from_host(slice(lo, hi), i % 2)
            else:
                idx = order[lo:hi]
                y = self.labels.index_select(0, idx)
                if self._normalized is not None:
                    yield torch.index_select(self._normalized, 0, idx, out=out) if ring else self._normalized[idx], y
                    continue
                if host_order is None:
                    x = self.images.index_select(0, idx)
                else:
                    x = self._from_host(host_order[lo:hi], i % 2)
            generator = self._generator(self.epoch, i, *self._augment_key) if self.augment or self.mix else None
            if self.augment is not None:
                x = self.augment(x, generator)  # type: ignore[arg-type]
            x = x if self.prepared else self.normalize(x, out)
            yield self.mix(x, y, generator) if self.mix is not None else (x, y)  # type: ignore[arg-type]

    def normalize(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``(x / 255 - mean) / std`` for a uint8 batch, into ``out`` when given."""
        out = torch.empty(x.shape, device=x.device) if out is None else out
        # Three simple passes (convert, scale, shift): each is vectorised. Converting inside
        # the multiply (uint8 * float) is one pass fewer but takes 60% longer on a CPU.
        return out.copy_(x).mul_(self.scale).add_(self.shift)

    def _normalize_all(self, images: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """A normalised float copy of ``images``, made a chunk at a time (no second full-size
        temporary); the same arithmetic as :meth:`normalize`, so the same values."""
        result = torch.empty(images.shape, device=self.device)
        for lo in range(0, len(images), chunk):
            self.normalize(images[lo : lo + chunk], result[lo : lo + chunk])
        return result
