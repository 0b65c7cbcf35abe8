"""ignite_mlp.engine.precision: --precision auto is a rule of the hardware (bf16 exactly where it is
native), decided once per run and recorded; resume, evaluate, predict and lr-find on the run take
the record, even on a machine that would decide otherwise. The hardware is injected (torch's CPU
capability query), so every test decides something on any CPU."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from ignite_mlp.engine.precision import Precision, choose_precision, native_bf16, recorded_precision

CPU = torch.device("cpu")
AVX512_BF16 = {"architecture": "x86_64", "amx_bf16": False, "avx512_bf16": True}
AVX2_ONLY = {"architecture": "x86_64", "amx_bf16": False, "avx512_bf16": False, "avx2": True}


def _cpu(monkeypatch: pytest.MonkeyPatch, caps: dict) -> None:
    """Make this process's CPU look like ``caps`` to torch's capability query."""
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: dict(caps))


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
    _cpu(monkeypatch, caps)
    found, why = native_bf16(CPU)
    assert found is native
    if native is False:
        assert why.startswith("no native bf16 on this CPU")


@pytest.mark.parametrize(
    ("caps", "expected"),
    [
        ({"architecture": "x86_64", "amx_bf16": True}, "bf16"),
        (AVX512_BF16, "bf16"),
        (AVX2_ONLY, "fp32"),
        ({"architecture": "aarch64", "bf16": True}, "bf16"),
        ({"architecture": "riscv64"}, "fp32"),  # torch cannot tell: the safe choice
    ],
)
def test_auto_is_bf16_exactly_where_the_hardware_computes_it(
    caps: dict, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _cpu(monkeypatch, caps)
    chosen = choose_precision("auto", CPU)
    assert chosen.name == expected
    assert chosen.reason.startswith("auto: ")


@pytest.mark.parametrize(("variable", "value", "expected"), [("ONEDNN_MAX_CPU_ISA", "AVX512_CORE", "fp32"),
    ("DNNL_MAX_CPU_ISA", "avx2", "fp32"), ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16", "bf16")])  # fmt: skip
def test_a_onednn_isa_cap_below_bf16_makes_auto_fp32(
    variable: str, value: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _cpu(monkeypatch, AVX512_BF16)
    monkeypatch.setenv(variable, value)
    assert choose_precision("auto", CPU).name == expected


def test_forced_precisions_are_taken_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    _cpu(monkeypatch, AVX2_ONLY)
    assert choose_precision("bf16", CPU) == Precision("bf16", "--precision bf16")
    _cpu(monkeypatch, AVX512_BF16)
    assert choose_precision("fp32", CPU) == Precision("fp32", "--precision fp32")


def test_auto_decides_the_same_on_a_busy_machine() -> None:
    """Three processes spinning on the 2 cores while auto decides, 20 times over: one answer,
    the idle one (nothing is timed, so the load cannot enter)."""
    from conftest import busy_cpu

    idle = choose_precision("auto", CPU)
    with busy_cpu():
        busy = {choose_precision("auto", CPU) for _ in range(20)}
    assert busy == {idle}


@pytest.mark.parametrize(
    ("values", "requested", "expected"),
    [
        ({"precision": "bf16", "precision_reason": "auto: AMX present"}, "auto", "bf16"),
        ({"precision": "auto", "resolved_precision": "bf16"}, "auto", "bf16"),  # an older run's record
        ({"precision": "auto"}, "auto", "fp32"),  # recorded before precision was resolved at all
        ({"precision": "bf16"}, "fp32", "fp32"),  # an override
    ],
)
def test_a_recorded_precision_is_read_back(values: dict, requested: str, expected: str) -> None:
    assert recorded_precision(values, requested).name == expected


def _train(tree: Path, run_dir: Path, **changes: object) -> list[str]:
    from ignite_mlp import TrainConfig, train

    lines: list[str] = []
    config = TrainConfig(
        data=str(tree), run_dir=str(run_dir), epochs=2, batch_size=8, progress=False, tensorboard=False, **changes
    )
    train(config, write=lines.append)
    return lines


def test_a_run_prints_and_records_its_precision(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _cpu(monkeypatch, AVX512_BF16)
    lines = _train(tree, tmp_path / "r")
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["precision"] == "bf16"
    assert (
        saved["precision_reason"] == "auto: AVX512-BF16 present, so bf16 autocast; --precision fp32 to compute in fp32"
    )
    assert f"precision: bf16 ({saved['precision_reason']})" in lines


def test_a_resume_keeps_the_recorded_precision_on_a_machine_that_would_choose_another(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trained in bf16 (native here), resumed on a twin without native bf16: still bf16, nothing
    listed as changed; then forced to fp32: an override, listed and recorded."""
    from ignite_mlp import TrainConfig, train

    run = tmp_path / "r"
    _cpu(monkeypatch, AVX512_BF16)
    _train(tree, run)
    _cpu(monkeypatch, AVX2_ONLY)
    lines: list[str] = []
    config = TrainConfig(resume=str(run), data=str(tree), epochs=3, batch_size=8, progress=False, tensorboard=False)
    train(config, write=lines.append)
    assert json.loads((run / "config.json").read_text())["precision"] == "bf16"
    assert any(line.startswith("precision: bf16 (as the run recorded: auto: AVX512-BF16 present") for line in lines)
    assert [line for line in lines if line.startswith("changed on resume")] == ["changed on resume: --epochs 2 -> 3"]
    lines.clear()
    train(
        TrainConfig(
            resume=str(run), data=str(tree), epochs=4, batch_size=8, precision="fp32", progress=False, tensorboard=False
        ),
        write=lines.append,
    )
    assert "changed on resume: --epochs 3 -> 4, --precision bf16 -> fp32" in lines
    resumes = json.loads((run / "resumes.json").read_text())
    assert [entry["changed"] for entry in resumes] == [
        {"epochs": [2, 3]},
        {"epochs": [3, 4], "precision": ["bf16", "fp32"]},
    ]


def test_lr_find_on_a_run_computes_in_its_recorded_precision(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ignite_mlp import TrainConfig
    from ignite_mlp.run.lr_finder import lr_find

    run = tmp_path / "r"
    _cpu(monkeypatch, AVX512_BF16)
    _train(tree, run)
    _cpu(monkeypatch, AVX2_ONLY)  # a new run would be fp32 here
    lines: list[str] = []
    config = TrainConfig(data=str(tree), run_dir=str(run), batch_size=8, progress=False)
    lr_find(config, num_iter=5, write=lines.append, out=tmp_path / "lr.png")
    assert any(line.startswith("precision: bf16 (as the run recorded") for line in lines)


def test_a_bf16_run_resumed_in_a_fresh_process_on_a_machine_without_native_bf16(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A run trained here on a CPU that looks native-bf16, resumed through the CLI (which reads the
    saved configuration back) in a child process whose CPU query says "no native bf16": the
    recorded bf16 is kept."""
    run = tmp_path / "r"
    _cpu(monkeypatch, AVX512_BF16)
    common = ["--data", str(tree), "--batch-size", "8", "--progress", "off", "--no-tensorboard"]
    assert run_cli(["train", "--epochs", "1", "--run-dir", str(run), *common]) == 0
    assert "precision: bf16 (auto: AVX512-BF16 present" in capsys.readouterr().out
    script = textwrap.dedent(
        """
        import sys, torch
        torch.cpu.get_capabilities = lambda: {"architecture": "x86_64", "avx512_bf16": False}
        from ignite_mlp.cli import main
        sys.exit(main(sys.argv[1:]))
        """
    )
    argv = ["train", "--resume", str(run), "--epochs", "2", "--progress", "off"]
    done = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "precision: bf16 (as the run recorded" in done.stdout
    assert "changed on resume: --epochs 1 -> 2" in done.stdout
