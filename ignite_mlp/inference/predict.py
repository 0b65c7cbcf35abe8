"""Classify your own pictures with a trained run: ``ignite-mlp predict RUN_OR_CHECKPOINT INPUT...``.

INPUT is image files, folders (searched recursively for image files) or ``.tar.gz`` archives.
Every image, whatever its size and mode, is brought to the run's input: its mode mapped to 8 bits
and its channel count as the data set's images are (alpha dropped), resized keeping its aspect
ratio until it covers the run's image size, then centre-cropped to it (an image already that size is left
as it is, so the run's own images are classified exactly as in validation). A file that
cannot be read gets a line on stderr and the rest go on; so does one over the limits of
:mod:`ignite_mlp.data.limits` (pixels, bytes, members), checked from its header before it is
decoded or read, so memory stays bounded whatever the input. A non-finite probability refuses
the run: it is a damaged model, not a result.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import tarfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image, ImageOps

from ignite_mlp.data.images import IMAGE_EXTENSIONS, to_8_bit
from ignite_mlp.data.limits import Budget, check_member_bytes, check_pixels
from ignite_mlp.errors import UserError
from ignite_mlp.inference.classifier import Classifier, top_k

FORMATS = ("table", "json", "csv")


@dataclass
class Prediction:
    """One classified file: its name and its top-k ``(class, probability)``, most probable first."""

    file: str
    top: list[tuple[str, float]]


@dataclass
class PredictSummary:
    """How many files were classified and which could not be read (name, reason)."""

    classified: int
    failed: list[tuple[str, str]]

    @property
    def exit_status(self) -> int:
        """0: all classified; 1: some could not be read; 2: none could be."""
        if self.classified == 0:
            return 2
        return 1 if self.failed else 0


def fit_image(image: Image.Image, shape: Sequence[int]) -> torch.Tensor:
    """``image`` as uint8 ``(C, H, W)`` of ``shape``: its mode mapped to 8 bits and C channels as
    a data set's images are (``to_8_bit``: 1 grey, 3 RGB, 4 RGBA; alpha dropped for 1 and 3),
    then resized keeping its aspect ratio to cover ``H x W`` and centre-cropped (Pillow's
    ``ImageOps.fit``, bilinear).

    >>> fit_image(Image.new("RGBA", (40, 20), (255, 0, 0, 255)), (3, 8, 8)).shape
    torch.Size([3, 8, 8])
    >>> fit_image(Image.new("LA", (2, 2), (90, 0)), (1, 2, 2)).flatten().tolist()  # alpha dropped
    [90, 90, 90, 90]
    """
    channels, height, width = (int(v) for v in shape)
    image = ImageOps.exif_transpose(image)  # photos: the way the camera was held
    try:
        image = to_8_bit(image, "image", channels)  # every mode mapped as the data set's images are
    except UserError as e:
        raise ValueError(str(e).removeprefix("image: ")) from None
    if image.size != (width, height):
        image = ImageOps.fit(image, (width, height), method=Image.Resampling.BILINEAR)
    array = np.asarray(image)
    tensor = torch.from_numpy(array.copy())
    return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()


def read_image(source: Callable[[], IO[bytes]], shape: Sequence[int], name: str = "image") -> torch.Tensor:
    """Open, decode and fit one image (see :func:`fit_image`); raises ValueError with the reason
    (an image over the pixel limit before it is decoded)."""
    try:
        with source() as stream, warnings.catch_warnings():
            # Pillow warns of images over its own limit as it opens them; ours, lower, is checked below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(stream)
            # JPEG: decode at the smallest power-of-two reduction still at least as large as needed.
            with image:
                side = max(int(shape[1]), int(shape[2]))
                image.draft(None, (side, side))
                check_pixels(image.width, image.height, name)  # the size it will decode to, from its header
                return fit_image(image, shape)
    except UserError as e:
        raise ValueError(str(e).removeprefix(f"{name}: ")) from None
    except Image.DecompressionBombError as e:
        raise ValueError(f"image too large ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.UnidentifiedImageError) as e:
        reason = "not an image Pillow can read" if isinstance(e, Image.UnidentifiedImageError) else str(e)
        raise ValueError(reason or type(e).__name__) from None


def find_inputs(inputs: Sequence[str]) -> Iterator[tuple[str, Callable[[], IO[bytes]] | None, str]]:
    """Yield ``(name, opener, error)`` for every image the inputs name: each file given, each
    image file under each folder (sorted, recursively), each image member of each .tar.gz. An
    input that does not exist yields no opener and the reason."""
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                yield text, None, f"no image files in this folder (looked for {', '.join(IMAGE_EXTENSIONS)})"
            for file in files:
                yield str(file), _checked_opener(file), ""
        elif path.is_file() and (text.endswith((".tar.gz", ".tgz"))):
            yield from _tar_inputs(path)
        elif path.is_file():
            yield text, _checked_opener(path), ""
        else:
            yield text, None, "no such file or folder"


def _checked_opener(path: Path) -> Callable[[], IO[bytes]]:
    def opener() -> IO[bytes]:
        check_member_bytes(path.stat().st_size, str(path))
        return open(path, "rb")

    return opener


def _tar_inputs(path: Path) -> Iterator[tuple[str, Callable[[], IO[bytes]] | None, str]]:
    """The image members of a .tar.gz, read one at a time as the archive streams by."""
    found = False
    budget = Budget(str(path))
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                budget.count()
                name = member.name.split("/")[-1]
                if member.isfile() and name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("._"):
                    found = True
                    where = f"{path}:{member.name}"
                    try:  # the size its header declares, before a byte of it is read
                        budget.take(member.size, where)
                    except UserError as e:
                        yield where, None, str(e).removeprefix(f"{where}: ")
                        continue
                    data = tar.extractfile(member).read()  # type: ignore[union-attr]
                    yield where, (lambda data=data: io.BytesIO(data)), ""
    except UserError as e:  # too many members or bytes: the rest of the archive is not read
        yield str(path), None, str(e).removeprefix(f"{path}: ")
        return
    except (tarfile.TarError, EOFError, OSError) as e:
        yield str(path), None, f"damaged or truncated archive ({e})"
        return
    if not found:
        yield str(path), None, "no image files in this archive"


def predict(
    classifier: Classifier,
    inputs: Sequence[str],
    top: int = 3,
    batch_size: int = 256,
    on_batch: Callable[[list[Prediction]], None] | None = None,
    on_error: Callable[[str, str], None] | None = None,
    progress: bool = False,
) -> tuple[list[Prediction], PredictSummary]:
    """Classify every image the inputs name, ``batch_size`` at a time, in input order.

    ``on_batch`` receives each batch's predictions as they are made, ``on_error`` each file that
    could not be read (name, reason); both default to doing nothing. Returns all predictions
    and the summary. ``progress`` shows a progress bar on stderr.
    """
    from tqdm.auto import tqdm

    predictions: list[Prediction] = []
    failed: list[tuple[str, str]] = []
    names: list[str] = []
    images: list[torch.Tensor] = []
    # Shown only when classifying takes a while (many files), and only on a terminal.
    bar = tqdm(desc="classifying", unit="img", disable=not progress, file=sys.stderr, leave=False, delay=1.0)

    def flush() -> None:
        if not images:
            return
        probabilities = classifier.probabilities(torch.stack(images))
        finite = torch.isfinite(probabilities).all(dim=1)
        if not bool(finite.all()):
            raise UserError(
                f"{classifier.checkpoint}: gives non-finite probabilities (NaN or inf) for "
                f"{names[int((~finite).nonzero()[0])]}; the model or its preprocessing is damaged: "
                "use another checkpoint or train again"
            )
        batch = [Prediction(n, t) for n, t in zip(names, top_k(probabilities, classifier.classes, top), strict=True)]
        predictions.extend(batch)
        if on_batch is not None:
            on_batch(batch)
        bar.update(len(batch))
        names.clear()
        images.clear()

    for name, opener, error in find_inputs(inputs):
        if opener is not None:
            try:
                images.append(read_image(opener, classifier.image_shape, name))
                names.append(name)
            except ValueError as e:
                error = str(e)
        if error:
            failed.append((name, error))
            if on_error is not None:
                on_error(name, error)
        if len(images) >= batch_size:
            flush()
    flush()
    bar.close()
    return predictions, PredictSummary(len(predictions), failed)


def format_table(predictions: Sequence[Prediction]) -> str:
    """A table: the file, then per rank the class and its probability in percent.

    >>> print(format_table([Prediction("a.png", [("cat", 0.9), ("dog", 0.05)])]))
    file   1st         2nd
    a.png  cat  90.0%  dog   5.0%
    """
    if not predictions:
        return ""
    width = max(len("file"), *(len(p.file) for p in predictions))
    name_width = max(len(c) for p in predictions for c, _ in p.top)
    cell = name_width + 8
    ranks = [_ordinal(i + 1) for i in range(len(predictions[0].top))]
    lines = [f"{'file':<{width}}  " + " ".join(f"{r:<{cell}}" for r in ranks).rstrip()]
    for p in predictions:
        cells = [f"{c:<{name_width}} {100 * v:5.1f}%" for c, v in p.top]
        lines.append(f"{p.file:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def _ordinal(n: int) -> str:
    return f"{n}{'st' if n == 1 else 'nd' if n == 2 else 'rd' if n == 3 else 'th'}"


def json_lines(predictions: Sequence[Prediction]) -> str:
    """One JSON object a line: ``{"file": ..., "top": [{"class": ..., "probability": ...}, ...]}``.

    >>> print(json_lines([Prediction("a.png", [("cat", 0.9)])]))
    {"file": "a.png", "top": [{"class": "cat", "probability": 0.9}]}
    """
    return "\n".join(
        json.dumps({"file": p.file, "top": [{"class": c, "probability": round(v, 6)} for c, v in p.top]})
        for p in predictions
    )


def csv_rows(predictions: Sequence[Prediction], top: int, header: bool) -> str:
    """CSV: ``file,class_1,probability_1,...`` (the header when ``header``), one row a file.

    >>> print(csv_rows([Prediction("a,b.png", [("cat", 0.9)])], 1, header=True))
    file,class_1,probability_1
    "a,b.png",cat,0.900000
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(["file", *(f"{k}_{i}" for i in range(1, top + 1) for k in ("class", "probability"))])
    for p in predictions:
        writer.writerow([p.file, *(x for c, v in p.top for x in (c, f"{v:.6f}"))])
    return buffer.getvalue().rstrip("\n")


def run_predict(
    classifier: Classifier,
    inputs: Sequence[str],
    top: int = 3,
    fmt: str = "table",
    batch_size: int = 256,
    out: Any = None,
    err: Any = None,
) -> PredictSummary:
    """The ``predict`` command: classify, print in ``fmt`` to ``out`` (JSON and CSV as each batch
    is done, the table at the end), a line per unreadable file to ``err``; returns the summary."""
    out, err = out or sys.stdout, err or sys.stderr
    top = min(top, len(classifier.classes))
    started = [False]

    def emit(batch: list[Prediction]) -> None:
        if fmt == "json":
            print(json_lines(batch), file=out, flush=True)
        elif fmt == "csv":
            print(csv_rows(batch, top, header=not started[0]), file=out, flush=True)
        started[0] = True

    def complain(name: str, reason: str) -> None:
        print(f"ignite-mlp: cannot read {name}: {reason}", file=err, flush=True)

    progress = bool(getattr(err, "isatty", lambda: False)())
    predictions, summary = predict(classifier, inputs, top, batch_size, emit, complain, progress)
    if fmt == "table" and predictions:
        print(format_table(predictions), file=out)
    if summary.failed and (summary.classified or len(summary.failed) > 1):
        # (One input that could not be read: its own line says all, and stays the only one.)
        print(
            f"ignite-mlp: {len(summary.failed)} input(s) could not be read, {summary.classified} classified", file=err
        )
    return summary
