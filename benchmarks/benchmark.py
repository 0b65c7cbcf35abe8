"""Side-by-side benchmark: the tutorial's loop against ignite_mlp, on the same data, in one process.

    python benchmarks/benchmark.py --data ../shared/data/cifar10-jpg.tar.gz

Per epoch (training plus validation) it times, interleaved over several rounds:

  (a) tutorial: a torchvision-CIFAR10-style in-memory dataset, per-sample ToTensor + Normalize,
      DataLoader(batch 256, default workers), plain for-loop;
  (b) plain:    a plain PyTorch loop over the same in-memory uint8 tensors;
  (c) ignite:   ignite_mlp's trainer and evaluator with every default handler on;
  (d) floor:    forward, backward and SGD step on ready-made normalised batches, plus the
                validation forward passes: no data work at all.

It prints medians and the ratios a/c, c/b, c/d; then bf16 against fp32 (speed and accuracy),
the time to the first iteration of a fresh and a second (cached) start, and peak memory of a
default run. Without --data it generates random data of CIFAR-10's size.

Other measurements, one command each (see benchmarks/bench_modes.py):

    python benchmarks/benchmark.py --mode precision            # strong-recipe step fp32 vs bf16, what auto picks
    python benchmarks/benchmark.py --mode decode --data PACK   # naive loop vs old vs new decoder
    python benchmarks/benchmark.py --mode synthetic --images 2000000   # a 6 GB data file, one epoch
    python benchmarks/benchmark.py --mode memory --data PACK   # summed PSS: one process vs two
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import bench_modes
import numpy as np
import torch
from ignite.engine import Engine, Events
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms

from ignite_mlp import TrainConfig, train
from ignite_mlp.data import Dataset, load_dataset
from ignite_mlp.data.augment import make_augment
from ignite_mlp.model import MLP
from ignite_mlp.run.training import RunContext, build_loaders, build_optimizer

EpochFn = Callable[[], None]


# ------------------------------------------------------------------------ (a) the tutorial


class TutorialCIFAR(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR10 does: HWC uint8 arrays in memory, PIL + transform per sample."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable) -> None:
        self.data = images.permute(0, 2, 3, 1).numpy()  # (N, H, W, C) like torchvision's .data
        self.targets = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


def tutorial_epoch_fn(ds: Dataset, model: nn.Module, opt: torch.optim.Optimizer) -> EpochFn:
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)])
    train_loader = DataLoader(TutorialCIFAR(ds.train_images, ds.train_labels, tf), batch_size=256, shuffle=True)
    val_loader = DataLoader(TutorialCIFAR(ds.test_images, ds.test_labels, tf), batch_size=256, shuffle=False)
    loss_fn = nn.CrossEntropyLoss()

    def epoch() -> None:
        model.train()
        running_loss, correct, total = 0.0, 0, 0
        for x, y in train_loader:
            opt.zero_grad()
            out = model(x)
            loss = loss_fn(out, y)
            loss.backward()
            opt.step()
            running_loss += loss.item()
            correct += (out.argmax(1) == y).sum().item()
            total += len(y)
        model.eval()
        with torch.no_grad():
            for x, y in val_loader:
                out = model(x)
                loss_fn(out, y).item()
                (out.argmax(1) == y).sum().item()

    return epoch


# ------------------------------------------------------------------------ (b) plain loop, (d) floor


def plain_epoch_fn(ds: Dataset, model: nn.Module, opt: torch.optim.Optimizer) -> EpochFn:
    """ignite_mlp's own loaders (same tensors, same buffers) in a hand-written loop, same metrics."""
    train_loader, val_loader = build_loaders(ds, TrainConfig(), torch.device("cpu"))
    loss_fn = nn.CrossEntropyLoss()
    counter = iter(range(1, 10**9))

    def epoch() -> None:
        train_loader.set_epoch(next(counter))
        model.train()
        loss_sum, correct = torch.zeros(()), torch.zeros((), dtype=torch.long)
        for x, y in train_loader:
            opt.zero_grad()
            out = model(x)
            loss = loss_fn(out, y)
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * len(y)
            correct += (out.argmax(1) == y).sum()
        model.eval()
        with torch.no_grad():
            for x, y in val_loader:
                out = model(x)
                loss_sum += loss_fn(out, y) * len(y)
                correct += (out.argmax(1) == y).sum()
        loss_sum.item(), correct.item()

    return epoch


def floor_epoch_fn(ds: Dataset, model: nn.Module, opt: torch.optim.Optimizer, eval_batch: int) -> EpochFn:
    """Only the arithmetic: batches already normalised, nothing measured."""
    g = torch.Generator().manual_seed(0)
    n = len(ds.train_labels)
    perm = torch.randperm(n, generator=g)
    scale, shift = 1 / 127.5, -1.0
    train_batches = [
        (ds.train_images[perm[i : i + 256]].float() * scale + shift, ds.train_labels[perm[i : i + 256]])
        for i in range(0, n, 256)
    ]
    val_batches = [
        ds.test_images[i : i + eval_batch].float() * scale + shift for i in range(0, len(ds.test_labels), eval_batch)
    ]
    loss_fn = nn.CrossEntropyLoss()

    def epoch() -> None:
        model.train()
        for x, y in train_batches:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            for x in val_batches:
                model(x)

    return epoch


# ------------------------------------------------------------------------ (c) ignite_mlp


class Interleave:
    """A user handler (attached last): times each ignite_mlp epoch, then runs one epoch of
    each other method, outside ignite_mlp's timing, so all methods share the same minute."""

    def __init__(self, others: dict[str, EpochFn], limits: dict[str, int] | None = None) -> None:
        self.others = others
        self.limits = limits or {}  # method -> at most this many epochs (the slow tutorial loop)
        self.times: dict[str, list[float]] = {k: [] for k in ("c", *others)}
        self.t0 = 0.0

    def __call__(self, trainer: Engine, evaluator: Engine, context: RunContext) -> None:
        trainer.add_event_handler(Events.EPOCH_STARTED, self.start)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self.complete)

    def start(self, _: Engine) -> None:
        self.t0 = time.perf_counter()

    def complete(self, _: Engine) -> None:
        self.times["c"].append(time.perf_counter() - self.t0)
        for key, epoch in self.others.items():
            if len(self.times[key]) >= self.limits.get(key, 10**9):
                continue
            t = time.perf_counter()
            epoch()
            self.times[key].append(time.perf_counter() - t)


class EpochClock:
    """A user handler (attached last) that notes when each epoch's handlers have all finished."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    def __call__(self, trainer: Engine, evaluator: Engine, context: RunContext) -> None:
        trainer.add_event_handler(Events.STARTED, lambda _: self.marks.append(time.perf_counter()))
        trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: self.marks.append(time.perf_counter()))

    def epoch_times(self) -> list[float]:
        return [b - a for a, b in zip(self.marks, self.marks[1:], strict=False)]


def ignite_epochs(
    ds: Dataset,
    epochs: int,
    out: Path,
    precision: str = "fp32",
    extra: Interleave | None = None,
    recipe: str = "tutorial",
) -> tuple[list[float], float]:
    """Per-epoch seconds of an ignite_mlp run with default handlers, and its best validation accuracy."""
    clock = EpochClock()
    config = TrainConfig.from_recipe(
        recipe, run_dir=str(out), epochs=epochs, precision=precision, device="cpu", overwrite=True
    )
    # The progress bar and epoch lines stay on (they are default handlers) but out of the report.
    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull), contextlib.redirect_stdout(devnull):
        result = train(config, extra_handlers=[clock, *([extra] if extra else [])], dataset=ds, write=lambda s: None)
    return clock.epoch_times(), result.best_val_acc or 0.0


# ------------------------------------------------------------------------ report


def hardware() -> str:
    cpu = platform.processor() or "cpu"
    if Path("/proc/cpuinfo").exists():
        names = [
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), {gpu}"


def generated_dataset() -> Dataset:
    g = torch.Generator().manual_seed(0)
    return Dataset(
        torch.randint(0, 256, (50000, 3, 32, 32), dtype=torch.uint8, generator=g),
        torch.randint(0, 10, (50000,), generator=g),
        torch.randint(0, 256, (10000, 3, 32, 32), dtype=torch.uint8, generator=g),
        torch.randint(0, 10, (10000,), generator=g),
        [str(i) for i in range(10)],
        "generated",
    )


MODES = ("compare", "precision", "decode", "synthetic", "memory")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=MODES, default="compare", help="what to measure (default: compare)")
    parser.add_argument("--data", help="data source (default: generated data of CIFAR-10's size)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (compare: 30, others: 5)")
    parser.add_argument("--accuracy-epochs", type=int, default=50, help="epochs for the fp32-vs-bf16 accuracy run")
    parser.add_argument("--epochs", type=int, default=None, help="precision: strong epochs each (3); memory: 2")
    parser.add_argument("--images", type=int, default=2_000_000, help="synthetic: training images to generate")
    parser.add_argument("--out", help="synthetic: keep the data file here (for --mode memory --data FILE)")
    parser.add_argument("--startup-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.startup_child:
        data, cache, t0, run_dir = args.startup_child
        bench_modes.startup_child(data, cache, float(t0), run_dir)
        return 0
    print(f"hardware: {hardware()}")
    if args.mode == "compare":
        return compare(args)
    tmp = Path(tempfile.mkdtemp(prefix="ignite-mlp-bench-"))
    rounds = args.rounds or 5
    if args.mode == "precision":
        ds = load_dataset(args.data) if args.data else generated_dataset()
        bench_modes.precision_mode(ds, rounds, 3 if args.epochs is None else args.epochs, ignite_epochs, tmp)
    elif args.mode == "decode":
        if not args.data or Path(args.data).suffix == bench_modes.SUFFIX:
            parser.error("--mode decode needs --data: a class-folder tree or its .tar.gz")
        bench_modes.decode_mode(Path(args.data), rounds)
    elif args.mode == "synthetic":
        bench_modes.synthetic_mode(args.images, args.out, tmp)
    else:
        if not args.data:
            parser.error("--mode memory needs --data (the pack, or a data file from --mode synthetic --out)")
        bench_modes.memory_mode(args.data, args.epochs or 2, tmp)
    return 0


def compare(args: argparse.Namespace) -> int:
    """The side-by-side epoch comparison of the module docstring, and what it also measures."""
    args.rounds = args.rounds or 30
    ds = load_dataset(args.data) if args.data else generated_dataset()
    print(f"data: {args.data or 'generated random data'}: {len(ds.train_labels)} train, {len(ds.test_labels)} val")
    eval_batch = TrainConfig().eval_batch_size
    tmp = Path(tempfile.mkdtemp(prefix="ignite-mlp-bench-"))

    def fresh() -> tuple[nn.Module, torch.optim.Optimizer]:
        """The same initial model and optimiser for every method."""
        torch.manual_seed(0)
        model = MLP(ds.in_features, ds.num_classes, [128])
        return model, build_optimizer(model, TrainConfig())

    # The machine's speed drifts by tens of percent within seconds, so the methods take turns
    # epoch by epoch: ignite_mlp runs its epochs, and after each one (inside a user handler,
    # outside its timing) one epoch each of (b) and (d) runs, and of (a) in the first rounds
    # (it is ten times slower and its ratio is far from any target). Round 1 is a warm-up.
    # Reported: each method's median and minimum (noise only ever adds time, so the minimum is
    # the cleanest estimate), the median of the per-round ratios and the ratio of the minima.
    others = {
        "a": tutorial_epoch_fn(ds, *fresh()),
        "b": plain_epoch_fn(ds, *fresh()),
        "d": floor_epoch_fn(ds, *fresh(), eval_batch),
    }
    tutorial_rounds = min(args.rounds, 3)
    interleave = Interleave(others, limits={"a": tutorial_rounds + 1})
    ignite_epochs(ds, args.rounds + 1, tmp / "c", extra=interleave)
    times = {k: v[1:] for k, v in interleave.times.items()}
    for i in range(args.rounds):
        print(f"  round {i + 1}: " + ", ".join(f"{k} {v[i]:.3f}s" for k, v in sorted(times.items()) if i < len(v)))

    def per_round(top: str, bottom: str) -> list[float]:
        return [t / b for t, b in zip(times[top], times[bottom], strict=False)]

    names = {
        "a": "tutorial DataLoader loop",
        "b": "plain loop, in-memory",
        "c": "ignite_mlp, all handlers",
        "d": "compute floor",
    }
    print(
        f"\nseconds per epoch (train + validation) over {args.rounds} interleaved rounds "
        f"({tutorial_rounds} for the tutorial loop):"
    )
    print("| method | median s/epoch | min s/epoch |\n| --- | --- | --- |")
    for k in "abcd":
        print(f"| ({k}) {names[k]} | {statistics.median(times[k]):.3f} | {min(times[k]):.3f} |")
    print("\n| ratio | median of per-round ratios | ratio of minima |\n| --- | --- | --- |")
    for top, bottom in (("a", "c"), ("c", "b"), ("c", "d")):
        print(
            f"| {top}/{bottom} | {statistics.median(per_round(top, bottom)):.3f} | "
            f"{min(times[top]) / min(times[bottom]):.3f} |"
        )

    also_measured(ds, args, tmp)
    return 0


def also_measured(ds: Dataset, args: argparse.Namespace, tmp: Path) -> None:
    """bf16 against fp32, augmentation's share, start-up times and peak memory."""
    n = args.accuracy_epochs
    fp32_times, fp32_acc = ignite_epochs(ds, n, tmp / "fp32")
    bf16_times, bf16_acc = ignite_epochs(ds, n, tmp / "bf16", precision="bf16")
    f, b = statistics.median(fp32_times), statistics.median(bf16_times)
    print(
        f"\nprecision over {n} epochs: fp32 {f:.3f} s/epoch, best val acc {fp32_acc:.2f}% | "
        f"bf16 {b:.3f} s/epoch, best val acc {bf16_acc:.2f}% | fp32/bf16 speed = {f / b:.2f}x"
    )

    # Augmentation's share of a strong-recipe epoch: the augment calls of one epoch, timed on
    # their own, against that recipe's whole epoch (training + validation), alternating.
    strong = TrainConfig.from_recipe("strong")
    augment = make_augment(strong.augment, strong.crop_padding)
    aug_seconds, epoch_seconds = [], []
    for r in range(2):
        epoch_seconds.append(statistics.median(ignite_epochs(ds, 2, tmp / f"strong{r}", "bf16", recipe="strong")[0]))
        t = time.perf_counter()
        for i in range(0, len(ds.train_labels), strong.batch_size):
            augment(ds.train_images[i : i + strong.batch_size], torch.Generator().manual_seed(i))
        aug_seconds.append(time.perf_counter() - t)
    a, e = statistics.median(aug_seconds), statistics.median(epoch_seconds)
    print(
        f"augmentation ({strong.augment}, padding {strong.crop_padding}): {a:.3f} s of a {e:.2f} s "
        f"strong-recipe epoch = {100 * a / e:.1f}%"
    )

    if args.data:
        cache = str(tmp / "startup-cache")
        first = bench_modes.time_to_first_iteration(args.data, cache, str(tmp / "s1"), __file__)
        second = bench_modes.time_to_first_iteration(args.data, cache, str(tmp / "s2"), __file__)
        print(f"start to first iteration: first (decoding) {first:.2f} s, second (cached) {second:.2f} s")
        peak = bench_modes.peak_rss_of_default_run(args.data, cache, str(tmp / "mem"), epochs=2)
        print(f"peak resident memory of a default run (2 epochs): {peak:.2f} GB")
    peak_here = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"peak resident memory of this benchmark process: {peak_here:.2f} GB")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())
