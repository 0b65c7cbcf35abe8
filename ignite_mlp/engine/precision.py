"""``--precision auto``: bf16 autocast only where the hardware computes bf16 natively and a
measured training step is faster; fp32 everywhere else.

bf16 matrix work is several times faster where the hardware has it (AMX or AVX512-BF16 on x86
CPUs, bf16 units on ARM CPUs, CUDA GPUs of compute capability 8.0 and later) and several times
slower where it is emulated (an Intel Xeon without either: a strong-recipe step took 421 ms in
bf16 against 129 ms in fp32). Capability flags alone do not settle it, since a small model or a
CPU with native but narrow bf16 units may not gain, so:

1. torch's capability queries rule out hardware without native bf16 (fp32, no measuring);
2. otherwise a probe times the run's own model and batch size in :data:`ROUNDS` rounds, each a
   few steps in one precision then in the other (taking turns: a machine whose speed drifts
   slows both alike). bf16 is taken when the rounds agree it is at least :data:`MIN_SPEEDUP`
   times faster, beyond their spread;
3. a decision the rounds agree on is cached per machine and model (``precision-probes.json`` in
   the cache folder), so later runs decide at once. One they disagree on (bf16 faster in some
   rounds, slower in others), or whose speed-up lies within the rounds' spread of the bar, is
   fp32 for this run and not cached: the next run measures again;
4. a cached decision is checked against the run itself (:class:`StepCheck`): when the run's
   first steps are far faster than the record (it was measured while other work loaded the
   machine), the probe runs again and its result replaces the record, for the runs after this one.

Seen on a CPU with AMX: a probe taken while other jobs ran measured 319 ms fp32 against 311 ms
bf16 per step; quiet, the same steps take 97 ms and 45 ms. Without 3 and 4 that one loaded
probe kept every later run there in fp32, 1.9x slower.

The choice and why (how sure the probe was) are printed at start-up and recorded in
the run's configuration (``resolved_precision``, ``precision_reason``). ``--precision fp32|bf16`` forces.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ignite_mlp.files import write_json_atomic
from ignite_mlp.model import MLP

if TYPE_CHECKING:
    from ignite_mlp.run.rundir import RunRecord

MIN_SPEEDUP = 1.1
PAIR = ("fp32", "bf16")
PROBE_FILE = "precision-probes.json"
# The probe: rounds of each precision in turn, each round at least ROUND_SECONDS of steps (a
# single step of a small model is too short to time against the machine's jitter).
ROUNDS = 5
ROUND_SECONDS = 0.2
MAX_ROUND_STEPS = 50
# The check of a cached record against the run: its steps after the first few (which pay for
# allocation and kernel choice) ...
CHECK_SKIP = 3
CHECK_STEPS = 20
# ... and how much faster than the record they must be for the record to count as stale.
STALE_FACTOR = 2.0

# A probe's outcome: seconds per step in each round, for "fp32" and for "bf16".
Rounds = dict[str, list[float]]


def forward_fn(precision: str, device: torch.device) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    """How the engines call the model: plainly, or under bf16 autocast with fp32 logits out.

    Only the forward pass is autocast; the loss and the optimiser step stay in fp32.

    >>> forward = forward_fn("bf16", torch.device("cpu"))
    >>> forward(nn.Linear(4, 2), torch.ones(3, 4)).dtype
    torch.float32
    """
    if precision == "fp32":
        return lambda model, x: model(x)
    if precision != "bf16":  # "auto" must be resolved first (resolve_precision)
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")

    def autocast_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            return model(x).float()

    return autocast_forward


@dataclass(frozen=True)
class Precision:
    """The precision a run computes in, and why.

    A decision read from the cache also carries the recorded seconds per step of ``name``
    (``cached_step``) and ``measure_again``, which probes afresh and replaces the record: what
    :class:`StepCheck` needs to test the record against the run.
    """

    name: str
    reason: str
    cached_step: float | None = field(default=None, compare=False)
    measure_again: Callable[[], Precision] | None = field(default=None, compare=False, repr=False)

    def line(self) -> str:
        return f"precision: {self.name} ({self.reason})"


@dataclass(frozen=True)
class ProbeModel:
    """What the probe builds and times: the run's model and per-process batch size."""

    in_features: int
    num_classes: int
    hidden_sizes: Sequence[int]
    norm: str = "none"
    activation: str = "relu"
    dropout: float = 0.0
    batch_size: int = 256
    blocks: int = 0
    expansion: int = 4

    def build(self) -> nn.Module:
        return MLP.from_config(self, self.in_features, self.num_classes)


def native_bf16(device: torch.device) -> tuple[bool | None, str]:
    """(Does ``device`` compute bf16 natively?, what was found). None: torch cannot tell."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        name = torch.cuda.get_device_name(device)
        if (major, minor) >= (8, 0):
            return True, f"{name} (compute capability {major}.{minor}) computes bf16 natively"
        return False, f"no native bf16 on {name} (compute capability {major}.{minor}, bf16 needs 8.0)"
    if device.type != "cpu":
        return None, f"no capability query for {device.type}"
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is None:  # torch before 2.9
        return None, "this torch cannot query the CPU's bf16 support"
    caps = capabilities()
    architecture = caps.get("architecture", platform.machine())
    features = _NATIVE_CPU_BF16.get(architecture)
    if features is None:
        return None, f"no bf16 query for {architecture} CPUs"
    found = [name for key, name in features if caps.get(key)]
    if found:
        return True, " and ".join(found) + " present"
    return False, "no native bf16 on this CPU (no " + ", no ".join(name for _, name in features) + ")"


# torch.cpu.get_capabilities() keys that mean bf16 arithmetic in hardware, per architecture.
_X86 = (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512-BF16"))
_ARM = (("bf16", "BF16"), ("sve_bf16", "SVE-BF16"))
_NATIVE_CPU_BF16 = {"x86_64": _X86, "x86": _X86, "aarch64": _ARM, "arm64": _ARM}


def probe_rounds(
    model: ProbeModel,
    device: torch.device,
    rounds: int = ROUNDS,
    clock: Callable[[], float] = time.perf_counter,
) -> Rounds:
    """Seconds per training step (forward, backward, SGD) in fp32 and in bf16, one figure per
    round. Each round times the same number of steps of each precision, in turns (fp32 first
    in even rounds, bf16 first in odd ones), enough steps for :data:`ROUND_SECONDS` of the
    slower one. ``clock`` is the timer (tests pass a fake one). Global random state is left as
    it was: the run's own initialisation does not depend on whether a probe ran."""
    devices = [device] if device.type == "cuda" else []

    def timed(step: Callable[[], None], n: int) -> float:
        start = clock()
        for _ in range(n):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (clock() - start) / n

    with torch.random.fork_rng(devices=devices):
        steps = {p: _training_step(model, device, p) for p in PAIR}
        for step in steps.values():  # warm-up: first calls pay for allocation and kernel choice
            step()
        slowest = max(timed(step, 1) for step in steps.values())
        n = min(MAX_ROUND_STEPS, max(1, math.ceil(ROUND_SECONDS / max(slowest, 1e-9))))
        times: Rounds = {p: [] for p in PAIR}
        for r in range(rounds):
            for p in PAIR if r % 2 == 0 else PAIR[::-1]:
                times[p].append(timed(steps[p], n))
    return times


def probe_step_times(model: ProbeModel, device: torch.device, rounds: int = ROUNDS) -> dict[str, float]:
    """The median over :func:`probe_rounds` of the seconds per step in each precision."""
    return {p: statistics.median(t) for p, t in probe_rounds(model, device, rounds).items()}


def _training_step(model: ProbeModel, device: torch.device, precision: str) -> Callable[[], None]:
    net = model.build().to(device).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    forward, loss_fn = forward_fn(precision, device), nn.CrossEntropyLoss()
    x = torch.randn(model.batch_size, model.in_features, device=device)
    y = torch.randint(0, model.num_classes, (model.batch_size,), device=device)

    def step() -> None:
        optimizer.zero_grad()
        loss_fn(forward(net, x), y).backward()
        optimizer.step()

    return step


@dataclass(frozen=True)
class Verdict:
    """What a probe's rounds say: bf16 or fp32, whether that is sure enough to cache, and how sure."""

    name: str
    cache: bool
    text: str
    # The median seconds per step of each precision.
    fp32: float
    bf16: float
    # How many rounds, and the median and standard deviation of their speed-ups fp32 / bf16.
    rounds: int = 0
    speedup: float = 0.0
    spread: float = 0.0


def judge(rounds: Rounds) -> Verdict:
    """Decide from a probe's rounds (see the module docstring).

    >>> judge({"fp32": [0.097, 0.099, 0.096], "bf16": [0.045, 0.047, 0.046]}).text
    '3 rounds, bf16 2.11x +- 0.04 faster: 46.0 ms bf16 vs 97.0 ms fp32 per step'
    >>> judge({"fp32": [0.319, 0.30, 0.32], "bf16": [0.311, 0.33, 0.29]}).text
    'rounds disagree (bf16 0.91x to 1.10x as fast as fp32 in 3 rounds): fp32 kept, not cached'
    """
    ratios = [f / b for f, b in zip(rounds["fp32"], rounds["bf16"], strict=True)]
    fp32, bf16 = statistics.median(rounds["fp32"]), statistics.median(rounds["bf16"])
    if min(ratios) < 1 < max(ratios):
        text = (
            f"rounds disagree (bf16 {min(ratios):.2f}x to {max(ratios):.2f}x as fast as fp32 in {len(ratios)} "
            "rounds): fp32 kept, not cached"
        )
        return Verdict("fp32", False, text, fp32, bf16)
    speedup = statistics.median(ratios)
    spread = statistics.stdev(ratios) if len(ratios) > 1 else 0.0
    text = _describe(len(ratios), speedup, spread, fp32, bf16)
    if abs(speedup - MIN_SPEEDUP) <= spread:  # the noise straddles the bar: no telling
        text += f", within the noise of the {MIN_SPEEDUP}x bar: fp32 kept, not cached"
        return Verdict("fp32", False, text, fp32, bf16, len(ratios), speedup, spread)
    name = "bf16" if speedup >= MIN_SPEEDUP else "fp32"
    return Verdict(name, True, text, fp32, bf16, len(ratios), speedup, spread)


def _describe(rounds: int, speedup: float, spread: float, fp32: float, bf16: float) -> str:
    """How sure a probe is, and its times: ``5 rounds, bf16 2.10x +- 0.05 faster: ...``."""
    return (
        f"{rounds} rounds, bf16 {speedup:.2f}x +- {spread:.2f} {'faster' if speedup >= 1 else 'as fast'}: "
        f"{1e3 * bf16:.1f} ms bf16 vs {1e3 * fp32:.1f} ms fp32 per step"
    )


def choose_precision(
    setting: str,
    model: ProbeModel,
    device: torch.device,
    cache_dir: Path | None = None,
    probe: Callable[[ProbeModel, torch.device], Rounds] | None = None,
) -> Precision:
    """The precision for ``setting`` (``auto``, ``fp32``, ``bf16``) on ``device`` (see the module
    docstring). ``probe`` replaces :func:`probe_rounds` (tests give it fake timings)."""
    if setting != "auto":
        return Precision(setting, f"--precision {setting}")
    native, found = native_bf16(device)
    if native is False:
        return Precision("fp32", found)
    key = _probe_key(model, device)

    def measure() -> Precision:
        verdict = judge((probe or probe_rounds)(model, device))
        if verdict.cache:
            _write_probe(cache_dir, key, verdict)
        else:  # an unsure decision must not stand for later runs, nor may an older record
            _drop_probe(cache_dir, key)
        return _explained(verdict.name, found, f"probe: {verdict.text}")

    record = _read_probes(cache_dir).get(key)
    if not (isinstance(record, dict) and all(_positive(record.get(p)) for p in PAIR)):
        return measure()
    fp32, bf16 = record["fp32"], record["bf16"]
    name = record.get("chosen") if record.get("chosen") in PAIR else ("bf16" if fp32 / bf16 >= MIN_SPEEDUP else "fp32")
    rounds, speedup, spread = record.get("rounds"), record.get("speedup"), record.get("spread")
    if isinstance(rounds, int) and rounds > 0 and _positive(speedup) and (spread == 0.0 or _positive(spread)):
        text = _describe(rounds, speedup, spread, fp32, bf16)
    else:  # a record from before the probe took rounds
        text = f"{1e3 * bf16:.1f} ms bf16 vs {1e3 * fp32:.1f} ms fp32 per step, {fp32 / bf16:.2f}x"
    chosen = _explained(name, found, f"cached probe: {text}")
    return Precision(chosen.name, chosen.reason, cached_step=record[name], measure_again=measure)


def _positive(value: Any) -> bool:
    """A finite float above 0 (what a record read from a file must hold before it is used)."""
    return isinstance(value, float) and math.isfinite(value) and value > 0


def _explained(name: str, found: str, how: str) -> Precision:
    if name == "bf16":
        return Precision("bf16", f"{found}; {how}")
    return Precision("fp32", f"{found}, but bf16 is not {MIN_SPEEDUP}x faster here; {how}")


class StepCheck:
    """Test a cached precision record against the run: time the run's steps
    ``skip + 1 .. skip + steps`` and, when they are more than :data:`STALE_FACTOR` times faster
    per step than the record, probe again and replace the record (this run keeps its precision:
    switching mid-run would change what it computes). Only a far *faster* run proves the record
    stale (measured while other work loaded the machine); a slower one may be loaded itself, and
    the run's steps also load data and update metrics, which the probe's do not.

    >>> from ignite.engine import Engine
    >>> stale = Precision("fp32", "cached", cached_step=5.0, measure_again=lambda: Precision("bf16", "probe: ..."))
    >>> engine, lines = Engine(lambda e, b: None), []
    >>> clock = lambda: float(engine.state.iteration)  # one second per step
    >>> StepCheck(stale, torch.device("cpu"), lines.append, clock=clock, skip=1, steps=4).attach(engine)
    >>> _ = engine.run(range(8))
    >>> print(lines[0].replace("; ", ";\\n"))
    precision: this run's steps take 1000.0 ms, 5.0x faster than the cached probe's 5000.0 ms fp32 step;
    measured again for later runs: bf16 (probe: ...);
    this run stays fp32
    """

    def __init__(
        self,
        precision: Precision,
        device: torch.device,
        write: Callable[[str], None] = print,
        clock: Callable[[], float] = time.perf_counter,
        skip: int = CHECK_SKIP,
        steps: int = CHECK_STEPS,
    ) -> None:
        self.precision, self.device, self.write, self.clock = precision, device, write, clock
        self.skip, self.steps = skip, steps
        self.seen = 0
        self.start: float | None = None
        # The run's seconds per step, once timed.
        self.step_time: float | None = None

    def attach(self, trainer: Any) -> None:
        from ignite.engine import Events  # Ignite only where a trainer is at hand

        trainer.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _now(self) -> float:
        if self.device.type == "cuda":  # the steps queued so far must have run
            torch.cuda.synchronize(self.device)
        return self.clock()

    def __call__(self, engine: Any) -> None:
        from ignite.engine import Events

        self.seen += 1
        if self.seen == self.skip:
            self.start = self._now()
        if self.seen < self.skip + self.steps or self.start is None:
            return
        engine.remove_event_handler(self, Events.ITERATION_COMPLETED)  # once per run
        self.step_time = (self._now() - self.start) / self.steps
        recorded = self.precision.cached_step
        if recorded is None or self.precision.measure_again is None or recorded <= STALE_FACTOR * self.step_time:
            return
        fresh = self.precision.measure_again()
        self.write(
            f"precision: this run's steps take {1e3 * self.step_time:.1f} ms, {recorded / self.step_time:.1f}x faster "
            f"than the cached probe's {1e3 * recorded:.1f} ms {self.precision.name} step; measured again for later "
            f"runs: {fresh.name} ({fresh.reason}); this run stays {self.precision.name}"
        )


def attach_step_check(
    trainer: Any, precision: Precision, device: torch.device, write: Callable[[str], None] = print
) -> StepCheck | None:
    """Attach a :class:`StepCheck` when ``precision`` came from a cached record; else nothing."""
    if precision.cached_step is None or precision.measure_again is None:
        return None
    check = StepCheck(precision, device, write)
    check.attach(trainer)
    return check


def resolve_precision(config: Any, in_features: int, num_classes: int, device: torch.device) -> Precision:
    """:func:`choose_precision` for a run's ``TrainConfig``: its model and per-process batch.

    With several processes, rank 0 decides and the others take its choice (each probing on
    shared cores would measure each other, and could disagree).
    """
    import ignite.distributed as idist

    from ignite_mlp.data import default_cache_dir

    model = ProbeModel(
        in_features,
        num_classes,
        tuple(config.hidden_sizes),
        config.norm,
        config.activation,
        config.dropout,
        max(1, config.batch_size // idist.get_world_size()),
        config.blocks,
        config.expansion,
    )
    cache = Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()
    if idist.get_world_size() == 1:
        return choose_precision(config.precision, model, device, cache)
    chosen = choose_precision(config.precision, model, device, cache) if idist.get_rank() == 0 else None
    text = json.dumps([chosen.name, chosen.reason]) if chosen is not None else None
    return Precision(*json.loads(idist.broadcast(text, src=0, safe_mode=True)))


def _probe_key(model: ProbeModel, device: torch.device) -> str:
    """What the probe's outcome depends on: the machine, the software, the model, the batch."""
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)}|{torch.version.cuda}"
    else:
        caps = getattr(torch.cpu, "get_capabilities", lambda: {})()
        cpu = caps.get("cpu_name") or platform.processor() or platform.machine()
        # oneDNN's ISA cap (set to test, or to dodge a buggy kernel) decides whether bf16 is native.
        isa = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "any ISA"
        where = f"{cpu}|{torch.get_num_threads()} threads|{isa}"
    text = json.dumps([where, torch.__version__, model.__dict__ | {"hidden_sizes": list(model.hidden_sizes)}])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_probes(cache_dir: Path | None) -> dict[str, Any]:
    if cache_dir is None:
        return {}
    try:
        probes = json.loads((cache_dir / PROBE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return probes if isinstance(probes, dict) else {}


def _write_probe(cache_dir: Path | None, key: str, verdict: Verdict) -> None:
    """Record one probe's decision in the cache; a cache folder that cannot be written only
    costs the next run another probe."""
    probes = _read_probes(cache_dir)
    probes[key] = {
        "chosen": verdict.name,
        "fp32": float(verdict.fp32),
        "bf16": float(verdict.bf16),
        "rounds": verdict.rounds,
        "speedup": float(verdict.speedup),
        "spread": float(verdict.spread),
    }
    _save_probes(cache_dir, probes)


def _drop_probe(cache_dir: Path | None, key: str) -> None:
    probes = _read_probes(cache_dir)
    if probes.pop(key, None) is not None:
        _save_probes(cache_dir, probes)


def _save_probes(cache_dir: Path | None, probes: dict[str, Any]) -> None:
    if cache_dir is None:
        return
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(cache_dir / PROBE_FILE, probes)
    except OSError:
        pass


def run_precision(record: RunRecord) -> str:
    """The precision a finished run computed in, from its checked configuration (for evaluation):
    what ``auto`` resolved to, else the one it asked for; fp32 for runs that recorded neither.

    >>> from types import SimpleNamespace as Record
    >>> auto = Record(config=Record(precision="auto"), values={"resolved_precision": "bf16"})
    >>> run_precision(auto), run_precision(Record(config=Record(precision="auto"), values={}))
    ('bf16', 'fp32')
    """
    resolved = record.values.get("resolved_precision") or record.config.precision
    return resolved if resolved in ("fp32", "bf16") else "fp32"
