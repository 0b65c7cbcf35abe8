"""``--precision``: the arithmetic a run trains in, decided once by a rule of the hardware.

``auto`` is bf16 autocast where the hardware computes bf16 natively (AMX or AVX512-BF16 on x86
CPUs, unless ``ONEDNN_MAX_CPU_ISA`` keeps oneDNN from them; BF16 or SVE-BF16 on ARM CPUs; CUDA
GPUs of compute capability 8.0 and later) and fp32 everywhere else, including wherever torch
cannot tell. No timing enters the decision: on one
machine the same command resolves the same way whether the machine is idle or busy, so the same
seed gives the same numbers. (An earlier version timed a probe at start-up; on a loaded machine
its rounds disagreed and the load decided the arithmetic.)

Measured side by side (``benchmarks/benchmark.py --mode precision``), bf16 training steps are
faster wherever bf16 is native: about 1.7x with AMX, 1.5x to 1.8x with AVX512-BF16; where it is
emulated they are about 3x slower, which the rule never chooses.

The decision and its reason are recorded in the run's configuration (``precision``,
``precision_reason``); resume, evaluate, predict, export, lr-find on a run, ``best.toml`` and
sweep trials take the recorded value and never decide again. ``--precision fp32|bf16`` forces.

Only the training step's forward pass is autocast. Every evaluation (validation, the test split,
``evaluate``, ``predict`` and the exported graphs) computes in fp32: see
:mod:`ignite_mlp.forward`.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

PRECISIONS_RESOLVED = ("fp32", "bf16")


def forward_fn(precision: str, device: torch.device) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    """How the trainer calls the model: plainly, or under bf16 autocast with fp32 logits out.

    Only the forward pass is autocast; the loss and the optimiser step stay in fp32.

    >>> forward = forward_fn("bf16", torch.device("cpu"))
    >>> forward(nn.Linear(4, 2), torch.ones(3, 4)).dtype
    torch.float32
    """
    if precision == "fp32":
        return lambda model, x: model(x)
    if precision != "bf16":  # "auto" must be resolved first (choose_precision)
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")

    def autocast_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            return model(x).float()

    return autocast_forward


@dataclass(frozen=True)
class Precision:
    """The precision a run computes in, and why.

    >>> Precision("fp32", "--precision fp32").line()
    'precision: fp32 (--precision fp32)'
    """

    name: str
    reason: str

    def line(self) -> str:
        return f"precision: {self.name} ({self.reason})"


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
    capped = _isa_cap()
    if capped:
        return False, capped
    caps = capabilities()
    architecture = caps.get("architecture", platform.machine())
    features = _NATIVE_CPU_BF16.get(architecture)
    if features is None:
        return None, f"no bf16 query for {architecture} CPUs"
    found = [name for key, name in features if caps.get(key)]
    if found:
        return True, " and ".join(found) + " present"
    return False, "no native bf16 on this CPU (no " + ", no ".join(name for _, name in features) + ")"


# oneDNN's instruction-set caps below its first with bf16 dot products (AVX512_CORE_BF16): with
# ONEDNN_MAX_CPU_ISA at one of these (set to test, or to dodge a buggy kernel) bf16 is emulated,
# about 2x slower, whatever the CPU has.
_ISAS_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")


def _isa_cap() -> str | None:
    """Why oneDNN will not compute bf16 natively whatever the CPU has, or None.

    >>> import os; os.environ["ONEDNN_MAX_CPU_ISA"] = "avx512_core"
    >>> _isa_cap()
    'no native bf16: ONEDNN_MAX_CPU_ISA=avx512_core keeps oneDNN below AVX512_CORE_BF16'
    >>> del os.environ["ONEDNN_MAX_CPU_ISA"]
    """
    for variable in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        value = os.environ.get(variable, "")
        if value.strip().upper() in _ISAS_WITHOUT_BF16:
            return f"no native bf16: {variable}={value} keeps oneDNN below AVX512_CORE_BF16"
    return None


# torch.cpu.get_capabilities() keys that mean bf16 arithmetic in hardware, per architecture.
_X86 = (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512-BF16"))
_ARM = (("bf16", "BF16"), ("sve_bf16", "SVE-BF16"))
_NATIVE_CPU_BF16 = {"x86_64": _X86, "x86": _X86, "aarch64": _ARM, "arm64": _ARM}


def choose_precision(setting: str, device: torch.device) -> Precision:
    """The precision for ``setting`` (``auto``, ``fp32``, ``bf16``) on ``device``: the forced one,
    or for ``auto`` bf16 exactly where the hardware computes it natively (see the module docstring).

    >>> choose_precision("fp32", torch.device("cpu"))
    Precision(name='fp32', reason='--precision fp32')
    """
    if setting != "auto":
        return Precision(setting, f"--precision {setting}")
    native, found = native_bf16(device)
    if native:
        return Precision("bf16", f"auto: {found}, so bf16 autocast; --precision fp32 to compute in fp32")
    return Precision("fp32", f"auto: {found}")


def recorded_precision(values: dict[str, object], requested: str) -> Precision:
    """The precision a run recorded (its configuration's ``values``), for a command that continues
    or uses the run: ``requested`` when it names one (an override), else the record's. A run
    recorded before precision was resolved into ``precision`` keeps it in ``resolved_precision``;
    one that recorded neither computed in fp32.

    >>> recorded_precision({"precision": "auto", "resolved_precision": "bf16"}, "auto").name
    'bf16'
    >>> recorded_precision({"precision": "bf16"}, "fp32")
    Precision(name='fp32', reason='--precision fp32')
    """
    if requested != "auto":
        return Precision(requested, f"--precision {requested}")
    for key in ("precision", "resolved_precision"):
        name = values.get(key)
        if name in PRECISIONS_RESOLVED:
            reason = values.get("precision_reason")
            return Precision(str(name), f"as the run recorded: {reason}" if reason else "as the run recorded")
    return Precision("fp32", "the run recorded no precision: fp32")


def resolve_precision(setting: str, device: torch.device) -> Precision:
    """:func:`choose_precision` for one process of a run. With several, rank 0 decides and the
    others take its choice (ranks on machines of different kinds could otherwise disagree)."""
    import ignite.distributed as idist

    if idist.get_world_size() == 1:
        return choose_precision(setting, device)
    chosen = choose_precision(setting, device) if idist.get_rank() == 0 else None
    text = json.dumps([chosen.name, chosen.reason]) if chosen is not None else None
    return Precision(*json.loads(idist.broadcast(text, src=0, safe_mode=True)))
