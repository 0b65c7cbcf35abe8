"""``--precision auto``: bf16 autocast only where the hardware computes bf16 natively and a
measured training step is faster; fp32 everywhere else.

bf16 matrix work is several times faster where the hardware has it (AMX or AVX512-BF16 on x86
CPUs, bf16 units on ARM CPUs, CUDA GPUs of compute capability 8.0 and later) and several times
slower where it is emulated (an Intel Xeon without either: a strong-recipe step took 421 ms in
bf16 against 129 ms in fp32). Capability flags alone do not settle it, since a small model or a
CPU with native but narrow bf16 units may not gain, so:

1. torch's capability queries rule out hardware without native bf16 (fp32, no measuring);
2. otherwise a short probe times the run's own model and batch size for a few training steps
   in each precision, interleaved, and bf16 is taken when it is at least
   :data:`MIN_SPEEDUP` times faster;
3. the probe's times are cached per machine and model (``precision-probes.json`` in the cache
   folder), so later runs decide at once.

The choice and why are printed at start-up and recorded in the run's configuration
(``resolved_precision``, ``precision_reason``). ``--precision fp32|bf16`` forces.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
    """The precision a run computes in, and why."""

    name: str
    reason: str

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


def probe_step_times(model: ProbeModel, device: torch.device, rounds: int = 4) -> dict[str, float]:
    """Median seconds of one training step (forward, backward, SGD) in fp32 and bf16, timed
    in turns so that a machine whose speed drifts slows both alike. Global random state is
    left as it was: the run's own initialisation does not depend on whether a probe ran."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        steps = {p: _training_step(model, device, p) for p in ("fp32", "bf16")}
        for step in steps.values():  # warm-up: first calls pay for allocation and kernel choice
            step()
        times: dict[str, list[float]] = {p: [] for p in steps}
        for r in range(rounds):
            for p in ("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32"):
                start = time.perf_counter()
                steps[p]()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times[p].append(time.perf_counter() - start)
    return {p: statistics.median(t) for p, t in times.items()}


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


def choose_precision(
    setting: str,
    model: ProbeModel,
    device: torch.device,
    cache_dir: Path | None = None,
    probe: Callable[[ProbeModel, torch.device], dict[str, float]] | None = None,
) -> Precision:
    """The precision for ``setting`` (``auto``, ``fp32``, ``bf16``) on ``device`` (see the module
    docstring). ``probe`` replaces :func:`probe_step_times` (tests force its outcome)."""
    if setting != "auto":
        return Precision(setting, f"--precision {setting}")
    native, found = native_bf16(device)
    if native is False:
        return Precision("fp32", found)
    key = _probe_key(model, device)
    cached = _read_probes(cache_dir).get(key)
    if not (isinstance(cached, dict) and all(isinstance(cached.get(p), float) and cached[p] > 0 for p in PAIR)):
        cached = None
    if cached is None:
        cached = (probe or probe_step_times)(model, device)
        _write_probe(cache_dir, key, cached)
        how = "probe"
    else:
        how = "cached probe"
    fp32, bf16 = cached["fp32"], cached["bf16"]
    speedup = fp32 / bf16
    timing = f"{how}: {1e3 * bf16:.1f} ms bf16 vs {1e3 * fp32:.1f} ms fp32 per step, {speedup:.2f}x"
    if speedup >= MIN_SPEEDUP:
        return Precision("bf16", f"{found}; {timing}")
    return Precision("fp32", f"{found}, but bf16 is not {MIN_SPEEDUP}x faster here; {timing}")


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


def _write_probe(cache_dir: Path | None, key: str, times: dict[str, float]) -> None:
    """Add one probe's times to the cache; a cache folder that cannot be written only costs the
    next run another probe."""
    if cache_dir is None:
        return
    probes = _read_probes(cache_dir)
    probes[key] = {"fp32": float(times["fp32"]), "bf16": float(times["bf16"])}
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
