"""ignite_mlp.run.checkpoint_io: tensor files read safely (no code runs), damaged files refused in
one line, the weights' shapes checked against the model."""

from pathlib import Path

import pytest
import torch
from conftest import Payload

from ignite_mlp.errors import UserError
from ignite_mlp.model import MLP
from ignite_mlp.run.checkpoint_io import check_model_shapes, safe_load


def test_checkpoint_needing_arbitrary_unpickling_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": Payload(marker)}, evil)
    assert not marker.exists()
    with pytest.raises(UserError, match="refused to load"):
        safe_load(evil)
    assert not marker.exists(), "the payload must not run"


def test_what_we_save_loads_safely(tmp_path: Path) -> None:
    path = tmp_path / "ok.pt"
    torch.save({"model": MLP(4, 2, [3]).state_dict(), "history": {"loss_epoch": [1.0]}}, path)
    assert safe_load(path)["history"] == {"loss_epoch": [1.0]}


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", None])
def test_corrupt_or_truncated_checkpoint(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "bad.pt"
    if content is None:  # a real checkpoint cut in half
        torch.save({"model": MLP(40, 2, [30]).state_dict()}, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(UserError, match="corrupt or truncated checkpoint"):
        safe_load(path)


def test_architecture_mismatch_names_the_shapes(tmp_path: Path) -> None:
    saved = MLP(12, 3, [8]).state_dict()
    with pytest.raises(UserError, match=r"layers.1.weight: checkpoint \(8, 12\) vs model \(16, 12\)"):
        check_model_shapes(MLP(12, 3, [16]), saved, tmp_path / "c.pt")
    with pytest.raises(UserError, match="missing from checkpoint"):
        check_model_shapes(MLP(12, 3, [8, 8]), saved, tmp_path / "c.pt")
    check_model_shapes(MLP(12, 3, [8]), saved, tmp_path / "c.pt")
