"""ignite_mlp.config.constraints: each rule the layers share, checked by hand."""

import pytest
import torch

from ignite_mlp.config.constraints import loss_is_nan, per_process_batch, require_cuda
from ignite_mlp.errors import UserError


@pytest.mark.parametrize(("batch", "processes", "share"), [(256, 1, 256), (256, 4, 64), (6, 3, 2)])
def test_batch_shares(batch: int, processes: int, share: int) -> None:
    assert per_process_batch(batch, processes) == share


def test_batch_that_does_not_split_names_the_nearest_that_do() -> None:
    with pytest.raises(UserError, match=r"--batch-size must be a multiple of --nproc-per-node 4 \(got 10\).*8 or 12"):
        per_process_batch(10, 4)
    with pytest.raises(UserError, match=r"pass --batch-size 3$"):
        per_process_batch(1, 3)


def test_nan_and_inf_losses_are_caught() -> None:
    assert loss_is_nan({"loss": torch.tensor(float("inf"))})
    assert not loss_is_nan({"loss": torch.tensor(1.0)})
    assert not loss_is_nan(None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_requested_without_cuda_is_one_line() -> None:
    with pytest.raises(UserError, match=r"^--device cuda:0: CUDA is not available on this machine; use --device cpu"):
        require_cuda("--device cuda:0")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_count_is_returned_and_too_many_refused() -> None:
    count = require_cuda("--device cuda")
    assert count == torch.cuda.device_count()
    with pytest.raises(UserError, match="only"):
        require_cuda("--nproc-per-node", gpus=count + 1)
