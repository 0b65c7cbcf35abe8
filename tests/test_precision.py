"""ignite_mlp.engine.precision: --precision auto takes bf16 only where native and measured faster,
caches only decisions its rounds agree on, and measures again when a run contradicts the record.
No test times anything: the probe's rounds and the run's clock are fakes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events

from ignite_mlp.engine import precision
from ignite_mlp.engine.precision import (
    ProbeModel,
    StepCheck,
    attach_step_check,
    choose_precision,
    native_bf16,
    probe_rounds,
)

CPU = torch.device("cpu")
MODEL = ProbeModel(3072, 10, (2048, 1024, 512), "batch", "gelu", 0.1, 512)


class _Probe:
    """A probe with fixed rounds (seconds per step, one per round), counting its calls."""

    def __init__(self, fp32: float | list[float], bf16: float | list[float], rounds: int = 3) -> None:
        def listed(t: float | list[float]) -> list[float]:
            return list(t) if isinstance(t, list) else [t] * rounds

        self.rounds, self.calls = {"fp32": listed(fp32), "bf16": listed(bf16)}, 0

    def __call__(self, model: ProbeModel, device: torch.device) -> dict[str, list[float]]:
        self.calls += 1
        return {p: list(t) for p, t in self.rounds.items()}


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
    faster = "faster" if bf16 < 0.111 else "as fast"
    assert f"probe: 3 rounds, bf16 {0.111 / bf16:.2f}x +- 0.00 {faster}: {1e3 * bf16:.1f} ms bf16 vs 111.0 ms fp32" in (
        chosen.reason
    )
    assert chosen.reason.startswith("AMX present;" if expected == "bf16" else "AMX present, but bf16 is not 1.1x")


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
    assert probe.calls == 1 and first.name == again.name == "bf16"
    assert (
        again.reason
        == "AMX present; cached probe: 3 rounds, bf16 2.00x +- 0.00 faster: 50.0 ms bf16 vs 100.0 ms fp32 per step"
    )
    [record] = json.loads((tmp_path / precision.PROBE_FILE).read_text()).values()
    assert record == {"chosen": "bf16", "fp32": 0.1, "bf16": 0.05, "rounds": 3, "speedup": 2.0, "spread": 0.0}
    choose_precision("auto", ProbeModel(3072, 10, (128,)), CPU, tmp_path, probe)
    assert probe.calls == 2  # another model is measured afresh
    choose_precision("auto", MODEL, CPU, None, probe)
    assert probe.calls == 3  # no cache folder: measured each time
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")  # bf16 emulated: another machine, in effect
    choose_precision("auto", MODEL, CPU, tmp_path, probe)
    assert probe.calls == 4


# The AMX machine of the module docstring: a probe under load, and the same machine quiet.
# (fp32 rounds, bf16 rounds), seconds per step.
LOADED_STABLE = ([0.319, 0.321, 0.318], [0.311, 0.312, 0.309])
LOADED_DISAGREEING = ([0.319, 0.290, 0.330, 0.305, 0.322], [0.311, 0.305, 0.300, 0.320, 0.309])
QUIET = ([0.097, 0.098, 0.096], [0.045, 0.047, 0.046])


@pytest.mark.usefixtures("native")
def test_rounds_that_disagree_about_which_is_faster_keep_fp32_and_cache_nothing(tmp_path: Path) -> None:
    # By hand: fp32/bf16 per round is 1.03, 0.95, 1.10, 0.95, 1.04: bf16 faster in three rounds, slower in two.
    probe = _Probe(*LOADED_DISAGREEING)
    chosen = choose_precision("auto", MODEL, CPU, tmp_path, probe)
    assert chosen.name == "fp32"
    assert "probe: rounds disagree (bf16 0.95x to 1.10x as fast as fp32 in 5 rounds): fp32 kept, not cached" in (
        chosen.reason
    )
    assert not (tmp_path / precision.PROBE_FILE).exists()
    choose_precision("auto", MODEL, CPU, tmp_path, probe)
    assert probe.calls == 2  # the next run measures again


@pytest.mark.usefixtures("native")
def test_a_speedup_within_the_rounds_spread_of_the_bar_is_not_cached(tmp_path: Path) -> None:
    # Ratios 1.00, 1.10, 1.25 (each bf16 faster or even): median 1.10, spread 0.13 straddles the 1.1x bar.
    probe = _Probe([0.100, 0.110, 0.125], [0.100, 0.100, 0.100])
    chosen = choose_precision("auto", MODEL, CPU, tmp_path, probe)
    assert chosen.name == "fp32" and "within the noise of the 1.1x bar: fp32 kept, not cached" in chosen.reason
    assert "3 rounds, bf16 1.10x +- 0.13 faster" in chosen.reason
    assert not (tmp_path / precision.PROBE_FILE).exists()


@pytest.mark.usefixtures("native")
def test_an_unsure_probe_removes_the_record_it_replaces(tmp_path: Path) -> None:
    choose_precision("auto", MODEL, CPU, tmp_path, _Probe(0.1, 0.05))
    stale = choose_precision("auto", MODEL, CPU, tmp_path, _Probe(0.1, 0.05))
    assert stale.measure_again is not None
    # Measured again, the rounds disagree: the old record must not decide later runs either.
    disagreeing = _Probe([0.1, 0.1], [0.09, 0.11])
    replaced = choose_precision("auto", MODEL, CPU, tmp_path, disagreeing)
    assert "cached probe" in replaced.reason  # (the record still stands until it is measured again)
    assert replaced.measure_again is not None
    assert replaced.measure_again().name == "fp32" and disagreeing.calls == 1
    assert json.loads((tmp_path / precision.PROBE_FILE).read_text()) == {}


class _Steps:
    """A fake clock for the step check: ``per_step`` seconds per training step of ``engine``."""

    def __init__(self, engine: Engine, per_step: float) -> None:
        self.engine, self.per_step = engine, per_step

    def __call__(self) -> float:
        return self.engine.state.iteration * self.per_step


def _run_with_check(chosen: precision.Precision, per_step: float, iterations: int = 30) -> tuple[StepCheck, list[str]]:
    engine, lines = Engine(lambda e, b: None), []
    check = StepCheck(chosen, CPU, lines.append, clock=_Steps(engine, per_step))
    check.attach(engine)
    engine.run(range(iterations))
    return check, lines


@pytest.mark.usefixtures("native")
def test_a_cached_record_contradicted_by_the_runs_first_steps_is_measured_again(tmp_path: Path) -> None:
    # Probed while other jobs loaded the machine: fp32 319 ms, bf16 311 ms, steady: fp32 cached.
    loaded = _Probe(*LOADED_STABLE)
    assert choose_precision("auto", MODEL, CPU, tmp_path, loaded).name == "fp32"
    # The next run, quiet: its fp32 steps take 97 ms, 3.3x faster than the record says. Measured
    # again: fp32/bf16 per round 2.156, 2.085, 2.087: median 2.09, standard deviation 0.04.
    quiet = _Probe(*QUIET)
    cached = choose_precision("auto", MODEL, CPU, tmp_path, quiet)
    assert cached.name == "fp32" and cached.cached_step == pytest.approx(0.319) and quiet.calls == 0
    check, lines = _run_with_check(cached, per_step=0.097)
    assert check.step_time == pytest.approx(0.097) and quiet.calls == 1
    assert lines == [
        "precision: this run's steps take 97.0 ms, 3.3x faster than the cached probe's 319.0 ms fp32 step; measured "
        "again for later runs: bf16 (AMX present; probe: 3 rounds, bf16 2.09x +- 0.04 faster: 46.0 ms bf16 vs 97.0 ms "
        "fp32 per step); this run stays fp32"
    ]
    later = choose_precision("auto", MODEL, CPU, tmp_path, quiet)
    assert later.name == "bf16" and "cached probe: 3 rounds, bf16 2.09x" in later.reason and quiet.calls == 1


@pytest.mark.usefixtures("native")
@pytest.mark.parametrize("per_step", [0.2, 0.319, 1.0])  # within 2x of the record, or slower (loaded now)
def test_a_cached_record_the_run_does_not_contradict_stands(tmp_path: Path, per_step: float) -> None:
    choose_precision("auto", MODEL, CPU, tmp_path, _Probe(0.319, 0.311))
    again = _Probe(0.097, 0.045)
    cached = choose_precision("auto", MODEL, CPU, tmp_path, again)
    check, lines = _run_with_check(cached, per_step)
    assert check.step_time == pytest.approx(per_step) and lines == [] and again.calls == 0
    assert choose_precision("auto", MODEL, CPU, tmp_path, again).name == "fp32"


@pytest.mark.usefixtures("native")
def test_only_a_cached_decision_is_checked_against_the_run(tmp_path: Path) -> None:
    engine = Engine(lambda e, b: None)
    assert attach_step_check(engine, choose_precision("bf16", MODEL, CPU, tmp_path), CPU) is None
    assert attach_step_check(engine, choose_precision("auto", MODEL, CPU, tmp_path, _Probe(0.1, 0.05)), CPU) is None
    check = attach_step_check(engine, choose_precision("auto", MODEL, CPU, tmp_path, _Probe(0.1, 0.05)), CPU)
    assert check is not None and engine.has_event_handler(check, Events.ITERATION_COMPLETED)


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


def test_the_real_probe_runs_rounds_of_both_precisions_and_leaves_the_random_state_alone() -> None:
    state = torch.get_rng_state()
    ticks = iter(range(1000))  # a fake clock: one second between readings
    rounds = probe_rounds(ProbeModel(48, 3, (32,), "batch", "gelu", 0.1, 16), CPU, rounds=2, clock=lambda: next(ticks))
    # Each timing reads the clock twice: one second per reading pair. Calibration timed one step of
    # each (1 s > ROUND_SECONDS), so every round takes one step: 1.0 s per step in every round.
    assert rounds == {"fp32": [1.0, 1.0], "bf16": [1.0, 1.0]}
    assert next(ticks) == 2 * 2 + 2 * 2 * 2  # 2 calibration timings, then 2 rounds of 2 precisions
    assert torch.equal(torch.get_rng_state(), state)


def test_a_run_prints_and_records_its_precision(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ignite_mlp import TrainConfig, train

    monkeypatch.setattr(precision, "native_bf16", lambda device: (True, "AVX512-BF16 present"))
    monkeypatch.setattr(precision, "probe_rounds", _Probe(0.2, 0.1))
    lines: list[str] = []
    config = TrainConfig(data=str(tree), run_dir=str(tmp_path / "r"), epochs=1, batch_size=8, progress=False)
    train(config, write=lines.append)
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (saved["precision"], saved["resolved_precision"]) == ("auto", "bf16")
    assert saved["precision_reason"] == (
        "AVX512-BF16 present; probe: 3 rounds, bf16 2.00x +- 0.00 faster: 100.0 ms bf16 vs 200.0 ms fp32 per step"
    )
    assert f"precision: bf16 ({saved['precision_reason']})" in lines


def test_the_probe_builds_the_runs_model_residual_blocks_included() -> None:
    from ignite_mlp.model import MLP, ResidualBlock

    probe = ProbeModel(3072, 10, (512,), "batch", "gelu", 0.0, 64, blocks=2, expansion=4)
    built = probe.build()
    expected = MLP(3072, 10, [512], 0.0, "batch", "gelu", 2, 4)
    assert sum(isinstance(m, ResidualBlock) for m in built.modules()) == 2
    assert [p.shape for p in built.parameters()] == [p.shape for p in expected.parameters()]


def test_a_run_checks_a_cached_record_against_its_own_steps(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ignite_mlp import TrainConfig, train

    monkeypatch.setattr(precision, "native_bf16", lambda device: (True, "AVX512-BF16 present"))
    # A record no real step comes near (200 s fp32, 100 s bf16), so no timing decides this test.
    probe = _Probe(200.0, 100.0)
    monkeypatch.setattr(precision, "probe_rounds", probe)
    common = {"data": str(tree), "batch_size": 2, "progress": False, "tensorboard": False}
    train(TrainConfig(run_dir=str(tmp_path / "first"), epochs=1, **common), write=lambda line: None)
    assert probe.calls == 1
    lines: list[str] = []
    train(TrainConfig(run_dir=str(tmp_path / "second"), epochs=2, **common), write=lines.append)
    [check] = [line for line in lines if line.startswith("precision: this run's steps take")]
    assert "than the cached probe's 100000.0 ms bf16 step" in check and check.endswith("this run stays bf16")
    assert probe.calls == 2
