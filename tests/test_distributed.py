"""ignite_mlp.distributed: sharded loading and the multi-process options."""

import pytest
import torch

from ignite_mlp.config import TrainConfig
from ignite_mlp.data import TensorLoader
from ignite_mlp.errors import UserError


def _labels(loader: TensorLoader) -> list[list[int]]:
    return [y.tolist() for _, y in loader]


def _loader(n: int, batch: int, rank: int = 0, world: int = 1, **kw) -> TensorLoader:
    # Labels are the sample indices, so batches show which samples they hold.
    images = torch.zeros(n, 1, 1, 1, dtype=torch.uint8)
    return TensorLoader(images, torch.arange(n), batch, [0.5], [0.5], rank=rank, world_size=world, **kw)


@pytest.mark.parametrize("world", [2, 3])
def test_training_shards_are_disjoint_and_together_make_the_one_process_batches(world: int) -> None:
    n, batch, epoch = 50, 6, 3
    one = _loader(n, batch, shuffle=True, seed=5)
    one.set_epoch(epoch)
    single = _labels(one)
    shards = []
    for rank in range(world):
        loader = _loader(n, batch, rank, world, shuffle=True, seed=5)
        loader.set_epoch(epoch)
        shards.append(_labels(loader))
        assert all(len(b) <= batch // world for b in shards[-1])
    # Every rank takes the same number of steps: each step is a collective.
    assert len({len(s) for s in shards}) == 1
    seen = [i for shard in shards for b in shard for i in b]
    assert len(seen) == len(set(seen)) == n - n % world  # disjoint; only the tail of n % world left out
    # Step i of all ranks together is the one-process batch i: they agree on the permutation.
    for i in range(len(shards[0])):
        assert sorted(j for shard in shards for j in shard[i]) == sorted(single[i])[: sum(len(s[i]) for s in shards)]
    # Another epoch, another order, still the same on every rank.
    for rank in range(world):
        loader = _loader(n, batch, rank, world, shuffle=True, seed=5)
        loader.set_epoch(epoch + 1)
        assert _labels(loader) != shards[rank]


@pytest.mark.parametrize("world", [2, 3, 4])
def test_validation_shards_hold_every_sample_exactly_once(world: int) -> None:
    n = 11  # does not divide evenly: shards differ by one sample, none is dropped or doubled
    seen = [i for rank in range(world) for b in _labels(_loader(n, 12, rank, world, even_shards=False)) for i in b]
    assert sorted(seen) == list(range(n))


def test_one_process_loader_is_unchanged_by_the_sharding_arguments() -> None:
    plain = TensorLoader(torch.zeros(10, 1, 1, 1, dtype=torch.uint8), torch.arange(10), 4, [0.5], [0.5], shuffle=True)
    assert _labels(plain) == _labels(_loader(10, 4, 0, 1, shuffle=True))


def test_batch_that_does_not_split_is_refused() -> None:
    with pytest.raises(ValueError, match="does not split evenly over 3 processes"):
        _loader(12, 8, 0, 3)
    with pytest.raises(UserError, match="--batch-size must be a multiple of --nproc-per-node 3"):
        TrainConfig(nproc_per_node=3, batch_size=256)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"nproc_per_node": 0}, "--nproc-per-node must be >= 1"),
        ({"backend": "mpi"}, "--backend must be one of"),
        ({"nproc_per_node": 2, "device": "cuda:1"}, "--device must be auto, cpu or cuda with --nproc-per-node > 1"),
        ({"backend": "nccl", "device": "cpu"}, "NCCL only connects GPUs"),
    ],
)
def test_bad_distributed_options_are_refused(fields: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        TrainConfig(**fields)
