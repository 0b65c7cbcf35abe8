"""Ship a trained run: ``ignite-mlp export RUN_OR_CHECKPOINT --format onnx|torchscript [--out PATH]``.

The exported model takes a uint8 batch ``(N, C, H, W)`` (any N) and returns class
probabilities ``(N, classes)``; the run's input normalisation is inside the graph, so running it
needs nothing of this package (ONNX: ``onnxruntime`` alone). The ONNX file carries the class
names, image shape and source run in its metadata; the TorchScript file the same as the extra
file ``ignite_mlp.json``. Before it returns, the export checks itself: on 256 validation images
the exported model, run by ``onnxruntime`` or ``torch.jit.load``, must agree with the PyTorch
model (probabilities within 1e-4, the same top-1 class for every image). A file that fails the
check is not left behind.
"""

from __future__ import annotations

import errno
import importlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ignite_mlp.errors import UserError
from ignite_mlp.files import replacing
from ignite_mlp.inference.classifier import Classifier, load_classifier, validation_images
from ignite_mlp.inference.outputs import refuse_run_file_and_lock
from ignite_mlp.run.rundir import RunDir

FORMATS = ("onnx", "torchscript")
EXTRA = "export"  # setup.cfg's extra with what ONNX export needs
EXTRA_MODULES = ("onnx", "onnxscript", "onnxruntime")
TOLERANCE = 1e-4  # largest allowed difference of any probability
CHECK_IMAGES = 256


class ExportCheckFailed(RuntimeError):
    """The exported model disagreed with the PyTorch model; nothing was written."""


@dataclass
class ExportResult:
    path: Path
    check: str  # the one line saying how the exported model agreed with the PyTorch one

    def report(self) -> str:
        return f"{self.check}\nwrote {self.path}"


def require_export_extra() -> None:
    """Say in one line which extra to install when a module ONNX export needs is missing."""
    for name in EXTRA_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            raise UserError(
                f"ONNX export needs {name}, which is not installed: pip install 'ignite_mlp[{EXTRA}]' "
                f"(installs {', '.join(EXTRA_MODULES)})"
            ) from None


def metadata(classifier: Classifier) -> dict[str, str]:
    """What the exported file says about itself (ONNX metadata_props; TorchScript extra file)."""
    from ignite_mlp import __version__

    c, h, w = classifier.image_shape
    return {
        "classes": json.dumps(classifier.classes),
        "image_shape": json.dumps(list(classifier.image_shape)),
        "source_run": str(classifier.run_dir.resolve()),
        "checkpoint": classifier.checkpoint.name,
        "input": f"images: uint8 (N, {c}, {h}, {w}), pixel values 0-255, channels {'grey' if c == 1 else 'RGB(A)'}",
        "output": f"probabilities: float32 (N, {len(classifier.classes)}), in the order of classes",
        "preprocessing": json.dumps(classifier.preprocessing.description),
        "producer": f"ignite_mlp {__version__}",
    }


def export(target: str | Path, fmt: str, out: str | Path | None = None, data: str | None = None) -> ExportResult:
    """Export the classifier of ``target`` (a run directory or checkpoint) as ``fmt`` to ``out``
    (default: ``RUN_DIR/model.onnx`` or ``RUN_DIR/model.torchscript.pt``), after checking it on
    validation images of the run's data (or ``data``)."""
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {FORMATS} (got {fmt!r})")
    if fmt == "onnx":
        require_export_extra()
    classifier = load_classifier(target, "cpu")
    default = RunDir(classifier.run_dir).export_file(fmt)
    path = Path(out) if out else default
    if path.is_dir():
        raise UserError(f"--out {path}: is a folder; give a file name such as {path / default.name}")
    if not path.parent.is_dir():
        raise UserError(f"--out {path}: folder {path.parent} does not exist; create it or choose another --out")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise UserError(f"--out {path}: folder {path.parent} is not writable; choose another --out")
    images, source = validation_images(classifier, CHECK_IMAGES, data)
    # Written beside the target and renamed over it only once it passed: never a bad or half file.
    try:
        with refuse_run_file_and_lock(path, allowed=(default.name,)), replacing(path) as pending:
            if fmt == "onnx":
                _write_onnx(classifier, pending)
                probabilities, runner = _run_onnx(pending, images), "onnxruntime"
            else:
                _write_torchscript(classifier, pending)
                probabilities, runner = _run_torchscript(pending, images), "torch.jit.load"
            check = compare(classifier.probabilities(images), probabilities, f"{fmt} ({runner})", source)
    except OSError as e:
        raise UserError(f"--out {path}: cannot write there ({e.strerror}); choose a writable --out") from None
    return ExportResult(path, check)


def compare(expected: torch.Tensor, got: Any, what: str, source: str) -> str:
    """The check line, or :class:`ExportCheckFailed` when the probabilities differ by
    ``TOLERANCE`` or more, or any image's top-1 class differs.

    >>> p = torch.tensor([[0.9, 0.1], [0.3, 0.7]])
    >>> for part in compare(p, p.numpy(), "onnx (onnxruntime)", "2 validation images").split(": "):
    ...     print(part)
    check
    onnx (onnxruntime) agrees with PyTorch on 2 validation images
    max |difference| of probabilities 0.0e+00, same top-1 for 2/2
    """
    got = torch.as_tensor(np.asarray(got), dtype=torch.float32)
    if got.shape != expected.shape:
        raise ExportCheckFailed(f"{what}: output shape {tuple(got.shape)}, expected {tuple(expected.shape)}")
    difference = float((got - expected).abs().max())
    same = int((got.argmax(1) == expected.argmax(1)).sum())
    line = (
        f"{what} agrees with PyTorch on {source}: max |difference| of probabilities {difference:.1e}, "
        f"same top-1 for {same}/{len(expected)}"
    )
    if not difference < TOLERANCE or same != len(expected):
        raise ExportCheckFailed(f"export check failed: {line.replace('agrees', 'disagrees')}; nothing written")
    return f"check: {line}"


def _example(classifier: Classifier) -> torch.Tensor:
    # Two images, not one: torch.export would fix a batch dimension of size 1 as a constant.
    return torch.zeros((2, *classifier.image_shape), dtype=torch.uint8)


def _write_onnx(classifier: Classifier, path: Path) -> None:
    import onnx

    batch = torch.export.Dim("batch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        program = torch.onnx.export(
            classifier.module,
            (_example(classifier),),
            dynamo=True,
            input_names=["images"],
            output_names=["probabilities"],
            dynamic_shapes=({0: batch},),
            verbose=False,
        )
    model = program.model_proto
    onnx.helper.set_model_props(model, metadata(classifier))
    model.doc_string = "uint8 images (N, C, H, W) in, class probabilities out; see metadata_props"
    onnx.save(model, str(path))


def _run_onnx(path: Path, images: torch.Tensor) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images.numpy()})[0]


def _write_torchscript(classifier: Classifier, path: Path) -> None:
    with warnings.catch_warnings():
        # TorchScript is deprecated in favour of torch.export, but loads anywhere torch runs.
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(classifier.module)
        try:
            torch.jit.save(scripted, str(path), _extra_files={"ignite_mlp.json": json.dumps(metadata(classifier))})
        except RuntimeError as e:  # TorchScript's writer reports a failed open or write so, not as OSError
            raise OSError(errno.EIO, f"torch.jit.save failed: {str(e).splitlines()[0]}") from None


def _run_torchscript(path: Path, images: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return loaded(images)
