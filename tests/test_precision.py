"""ignite_mlp.engine.precision: --precision auto takes bf16 only where native and measured faster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ignite_mlp.engine import precision
from ignite_mlp.engine.precision import ProbeModel, choose_precision, native_bf16, probe_step_times

CPU = torch.device("cpu")
MODEL = ProbeModel(3072, 10, (2048, 1024, 512), "batch", "gelu", 0.1, 512)


class _Probe:
    """A probe with a fixed outcome, counting its calls."""

    def __init__(self, fp32: float, bf16: float) -> None:
        self.times, self.calls = {"fp32": fp32, "bf16": bf16}, 0

    def __call__(self, model: ProbeModel, device: torch.device) -> dict[str, float]:
        self.calls += 1
        return dict(self.times)


@pytest.fixture
def native(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "native_bf16", lambda device: (True, "AMX present"))


def test_forced_precisions_are_taken_as_given(tmp_path: Path) -> None:
    probe = _Probe(0.1, 0.05)
    for name in ("fp32", "bf16"):
        assert choose_precision(name, MODEL, CPU, tmp_path, probe) == precision.Precision(name, f"--precision {name}")
    assert probe.calls == 0


@pytest.mark.usefixtures("native")
@pytest.mark.parametrize(("bf16", "expected"), [(0.065, "bf16"), (0.421, "fp32"), (0.105, "fp32")])
def test_auto_takes_bf16_only_when_the_probe_measures_it_faster(tmp_path: Path, bf16: float, expected: str) -> None:
    chosen = choose_precision("auto", MODEL, CPU, tmp_path, _Probe(0.111, bf16))
    assert chosen.name == expected
    assert f"{1e3 * bf16:.1f} ms bf16 vs 111.0 ms fp32 per step, {0.111 / bf16:.2f}x" in chosen.reason
    assert chosen.reason.startswith("AMX present" if expected == "bf16" else "AMX present, but bf16 is not 1.1x")


def test_without_native_bf16_auto_is_fp32_and_nothing_is_timed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "native_bf16", lambda device: (False, "no native bf16 on this CPU (no AMX)"))
    probe = _Probe(0.1, 0.01)
    assert choose_precision("auto", MODEL, CPU, tmp_path, probe) == precision.Precision(
        "fp32", "no native bf16 on this CPU (no AMX)"
    )
    assert probe.calls == 0


@pytest.mark.usefixtures("native")
def test_the_probe_runs_once_per_machine_and_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    probe = _Probe(0.1, 0.05)
    first = choose_precision("auto", MODEL, CPU, tmp_path, probe)
    again = choose_precision("auto", MODEL, CPU, tmp_path, probe)
    assert probe.calls == 1 and first.name == again.name == "bf16" and "cached probe" in again.reason
    assert list(json.loads((tmp_path / precision.PROBE_FILE).read_text()).values()) == [{"fp32": 0.1, "bf16": 0.05}]
    choose_precision("auto", ProbeModel(3072, 10, (128,)), CPU, tmp_path, probe)
    assert probe.calls == 2  # another model is measured afresh
    choose_precision("auto", MODEL, CPU, None, probe)
    assert probe.calls == 3  # no cache folder: measured each time
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")  # bf16 emulated: another machine, in effect
    choose_precision("auto", MODEL, CPU, tmp_path, probe)
    assert probe.calls == 4


@pytest.mark.parametrize(
    ("caps", "native"),
    [
        ({"architecture": "x86_64", "amx_bf16": True, "avx512_bf16": False}, True),
        ({"architecture": "x86_64", "amx_bf16": False, "avx512_bf16": True}, True),
        ({"architecture": "x86_64", "amx_bf16": False, "avx512_bf16": False, "avx512_f": True}, False),
        ({"architecture": "aarch64", "bf16": True}, True),
        ({"architecture": "aarch64", "bf16": False, "sve_bf16": False}, False),
        ({"architecture": "riscv64"}, None),
    ],
)
def test_native_bf16_reads_torchs_cpu_capabilities(
    caps: dict, native: bool | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    found, why = native_bf16(CPU)
    assert found is native
    if native is False:
        assert why.startswith("no native bf16 on this CPU")


def test_the_real_probe_times_both_precisions_and_leaves_the_random_state_alone() -> None:
    state = torch.get_rng_state()
    times = probe_step_times(ProbeModel(48, 3, (32,), "batch", "gelu", 0.1, 16), CPU, rounds=2)
    assert set(times) == {"fp32", "bf16"} and all(t > 0 for t in times.values())
    assert torch.equal(torch.get_rng_state(), state)


def test_a_run_prints_and_records_its_precision(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ignite_mlp import TrainConfig, train

    monkeypatch.setattr(precision, "native_bf16", lambda device: (True, "AVX512-BF16 present"))
    monkeypatch.setattr(precision, "probe_step_times", _Probe(0.2, 0.1))
    lines: list[str] = []
    config = TrainConfig(data=str(tree), run_dir=str(tmp_path / "r"), epochs=1, batch_size=8, progress=False)
    train(config, write=lines.append)
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (saved["precision"], saved["resolved_precision"]) == ("auto", "bf16")
    assert saved["precision_reason"].startswith("AVX512-BF16 present; probe: 100.0 ms bf16 vs 200.0 ms fp32")
    assert f"precision: bf16 ({saved['precision_reason']})" in lines


def test_the_probe_builds_the_runs_model_residual_blocks_included() -> None:
    from ignite_mlp.model import MLP, ResidualBlock

    probe = ProbeModel(3072, 10, (512,), "batch", "gelu", 0.0, 64, blocks=2, expansion=4)
    built = probe.build()
    expected = MLP(3072, 10, [512], 0.0, "batch", "gelu", 2, 4)
    assert sum(isinstance(m, ResidualBlock) for m in built.modules()) == 2
    assert [p.shape for p in built.parameters()] == [p.shape for p in expected.parameters()]
