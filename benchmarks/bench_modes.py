"""The benchmark's modes beyond the side-by-side epoch comparison (see ``benchmarks/benchmark.py``).

* ``precision``: the strong recipe's training step (3072-2048-1024-512-10, BatchNorm, GELU,
  batch 512) in fp32 and bf16, interleaved; what ``--precision auto`` chooses here and why;
  then strong-recipe epochs with ``auto`` against ``--precision fp32``, interleaved.
* ``decode``: decoding a tree or tarball three ways, interleaved: a naive one-core loop
  (tarfile + Pillow + ``convert("RGB")`` + ``numpy.asarray`` per file), the old one-core
  decoder, and the new process pool.
* ``synthetic``: write N random 32x32x3 images straight into a data file, train one epoch from
  it in a fresh process, print images per second and that process's peak anonymous memory.
* ``memory``: train 2 epochs in one process, then in two (``--nproc-per-node 2``), each in a
  fresh process tree, sampling every process's ``/proc/PID/smaps_rollup``: the peak summed
  proportional set size (PSS) and anonymous memory of each, and their ratio.

Also here: the start-up time and peak memory helpers of the default ``compare`` mode.
"""

from __future__ import annotations

import io
import os
import re
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from PIL import Image
from reference_decoder import read_class_folders_serial  # beside this file

from ignite_mlp import TrainConfig, train
from ignite_mlp.data import Dataset
from ignite_mlp.data.cache import SUFFIX, DataFileWriter
from ignite_mlp.data.images import IMAGE_EXTENSIONS
from ignite_mlp.data.parallel import default_workers, read_class_folders
from ignite_mlp.engine.precision import choose_precision, forward_fn
from ignite_mlp.model import MLP
from ignite_mlp.run.training import RunContext

# Children import this checkout's ignite_mlp, as the benchmark itself does.
_ROOT = str(Path(__file__).resolve().parents[1])
# The strong recipe's model and batch: the step whose speed --precision auto is about.
STRONG_STEP = TrainConfig.from_recipe("strong")


def step_times(config: TrainConfig, device: torch.device, rounds: int) -> dict[str, list[float]]:
    """Seconds per training step (forward, backward, SGD) of ``config``'s model and batch in fp32
    and in bf16, one figure per round; the two take turns, so a drifting machine slows both alike."""
    x, y = torch.randn(config.batch_size, 3072), torch.randint(0, 10, (config.batch_size,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def make_step(precision: str) -> Callable[[], None]:
        net = MLP.from_config(config, 3072, 10).to(device).train()
        optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
        forward = forward_fn(precision, device)

        def step() -> None:
            optimizer.zero_grad()
            loss_fn(forward(net, x), y).backward()
            optimizer.step()

        step()  # warm-up: the first call pays for allocation and kernel choice
        return step

    steps = {p: make_step(p) for p in ("fp32", "bf16")}
    times: dict[str, list[float]] = {p: [] for p in steps}
    for r in range(rounds):
        for p in ("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32"):
            start = time.perf_counter()
            for _ in range(5):
                steps[p]()
            times[p].append((time.perf_counter() - start) / 5)
    return times


def _median_ms(values: list[float]) -> str:
    return f"{1e3 * statistics.median(values):.1f} ms"


# ------------------------------------------------------------------------ precision


def precision_mode(ds: Dataset, rounds: int, epochs: int, epoch_fn: Callable[..., list[float]], tmp: Path) -> None:
    cpu = torch.device("cpu")
    print(f"strong-recipe training step (3072-2048-1024-512-10, BatchNorm, GELU, batch 512), {rounds} rounds:")
    steps = step_times(STRONG_STEP, cpu, rounds)
    ratio = statistics.median(f / b for f, b in zip(steps["fp32"], steps["bf16"], strict=True))
    print(f"  fp32 {_median_ms(steps['fp32'])}, bf16 {_median_ms(steps['bf16'])}: bf16 is {ratio:.2f}x as fast")
    chosen = choose_precision("auto", cpu)
    print(f"  --precision auto chose {chosen.name}: {chosen.reason}")
    if epochs < 1:
        return
    times: dict[str, list[float]] = {"auto": [], "fp32": []}
    for r in range(epochs):
        for p in ("auto", "fp32") if r % 2 == 0 else ("fp32", "auto"):
            # 2 epochs per run, the first one a warm-up
            times[p].append(epoch_fn(ds, 2, tmp / f"strong-{p}-{r}", precision=p, recipe="strong")[0][1])
    per_round = [a / f for a, f in zip(times["auto"], times["fp32"], strict=True)]
    print(
        f"strong-recipe epoch, {epochs} interleaved rounds: auto {statistics.median(times['auto']):.2f} s, "
        f"fp32 {statistics.median(times['fp32']):.2f} s, auto/fp32 = {statistics.median(per_round):.3f} "
        f"(median of per-round ratios)"
    )


# ------------------------------------------------------------------------ decode


def naive_decode(source: Path) -> int:
    """The plainest one-core loop: read each file, Pillow, convert to RGB, numpy."""
    count = 0

    def decode(data: bytes) -> None:
        nonlocal count
        with Image.open(io.BytesIO(data)) as image:
            np.asarray(image.convert("RGB"))
        count += 1

    if source.is_file():
        with tarfile.open(source, "r:gz") as tar:
            for member in tar:
                if member.isfile() and member.name.lower().endswith(IMAGE_EXTENSIONS):
                    decode(tar.extractfile(member).read())  # type: ignore[union-attr]
    else:
        for file in sorted(source.rglob("*")):
            if file.suffix.lower() in IMAGE_EXTENSIONS:
                decode(file.read_bytes())
    return count


def decode_mode(source: Path, rounds: int) -> None:
    kind = "tarball" if source.is_file() else "tree"
    methods = {
        "naive one-core loop": lambda: naive_decode(source),
        "old decoder (one core)": lambda: read_class_folders_serial(source, kind),
        f"new decoder ({default_workers()} processes)": lambda: read_class_folders(source, kind),
    }
    times: dict[str, list[float]] = {name: [] for name in methods}
    names = list(methods)
    for r in range(rounds):
        for name in names[r % 3 :] + names[: r % 3]:  # a different order each round
            start = time.perf_counter()
            methods[name]()
            times[name].append(time.perf_counter() - start)
    print(f"decoding {source}, {rounds} rounds (medians):")
    for name, values in times.items():
        print(f"  {name}: {statistics.median(values):.2f} s")
    naive, old, new = (times[n] for n in names)
    for label, slow in (("old", old), ("naive", naive)):
        ratio = statistics.median(s / n for s, n in zip(slow, new, strict=True))
        print(f"  {label}/new = {ratio:.2f}x (median of per-round ratios)")


# ------------------------------------------------------------------------ start-up and memory


def startup_child(data: str, cache: str, t0: float, run_dir: str) -> None:
    """Run inside a fresh interpreter: report seconds from launch to the first training iteration."""

    def first_iteration(trainer: Engine, evaluator: Engine, context: RunContext) -> None:
        def report(engine: Engine) -> None:
            print(f"FIRST_ITERATION {time.time() - t0:.3f}", flush=True)
            engine.terminate()

        trainer.add_event_handler(Events.ITERATION_STARTED(once=1), report)

    config = TrainConfig(data=data, cache_dir=cache, run_dir=run_dir, epochs=1, progress=False, overwrite=True)
    train(config, extra_handlers=[first_iteration], write=lambda s: None)


def time_to_first_iteration(data: str, cache: str, run_dir: str, script: str) -> float:
    """Seconds from launch to the first training iteration of ``script --startup-child``."""
    t0 = time.time()
    cmd = [sys.executable, script, "--startup-child", data, cache, str(t0), run_dir]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(next(line.split()[1] for line in out.splitlines() if line.startswith("FIRST_ITERATION")))


def peak_rss_of_default_run(data: str, cache: str, run_dir: str, epochs: int) -> float:
    """Peak resident memory (GB) of `ignite-mlp train` with default options, in its own process."""
    args = ["train", "--data", data, "--cache-dir", cache, "--run-dir", run_dir, "--epochs", str(epochs)]
    args += ["--no-progress", "--overwrite"]
    # The child reports its own high-water mark (VmHWM) at exit. Not ru_maxrss: Linux carries
    # that across fork+exec, so a child would inherit this big benchmark process's peak.
    code = (
        "import atexit, re, sys\n"
        "hwm = lambda: re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
        "atexit.register(lambda: print('PEAK_KB', hwm()))\n"
        "from ignite_mlp.cli import main\n"
        f"sys.exit(main({args!r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return int(next(line.split()[1] for line in out.splitlines() if line.startswith("PEAK_KB"))) / 1024**2


# ------------------------------------------------------------------------ memory of a process tree


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def process_tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += _children(p)
    return pids


def memory_kb(pid: int) -> tuple[int, int]:
    """(PSS, anonymous) of one process in kB, from /proc/PID/smaps_rollup (0, 0 once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0, 0
    fields = dict(re.findall(r"^(\w+):\s+(\d+) kB", text, re.M))
    return int(fields.get("Pss", 0)), int(fields.get("Anonymous", 0))


class PeakMemory:
    """Samples a process tree every ``seconds``: peak summed PSS and anonymous memory (MB)."""

    def __init__(self, pid: int, seconds: float = 0.1) -> None:
        self.pid, self.seconds = pid, seconds
        self.pss = self.anon = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sum(self) -> tuple[float, float]:
        samples = [memory_kb(p) for p in process_tree(self.pid)]
        return sum(s[0] for s in samples) / 1024, sum(s[1] for s in samples) / 1024

    def _run(self) -> None:
        while not self._stop.is_set():
            # The processes are read one after another, not at one instant: when a rank unmaps the
            # data file on its way out between two reads, its share of the file is counted once
            # before and then again inside the other rank's PSS (seen: 10.4 GB summed for a 6.2 GB
            # file). Two passes back to back, and the smaller sum of each: a level that lasts
            # is in both, a double count between reads is not.
            (pss1, anon1), (pss2, anon2) = self._sum(), self._sum()
            self.pss = max(self.pss, min(pss1, pss2))
            self.anon = max(self.anon, min(anon1, anon2))
            self._stop.wait(self.seconds)

    def stop(self) -> PeakMemory:
        self._stop.set()
        self._thread.join()
        return self


def train_in_child(args: list[str]) -> tuple[str, PeakMemory]:
    """Run ``ignite-mlp train ARGS`` in a fresh process; its stdout and its tree's peak memory."""
    cmd = [sys.executable, "-m", "ignite_mlp", "train", "--progress", "off", *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")]))}
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = PeakMemory(child.pid)
    out, err = child.communicate()
    peak.stop()
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({child.returncode}):\n{err[-3000:]}")
    return out, peak


def memory_mode(data: str, epochs: int, tmp: Path) -> None:
    cache = str(tmp / "memory-cache")
    common = ["--data", data, "--cache-dir", cache, "--epochs", str(epochs), "--overwrite"]
    train_in_child([*common, "--run-dir", str(tmp / "warm"), "--dry-run"])  # decode into the cache first
    peaks = {}
    for n in (1, 2):
        _, peaks[n] = train_in_child([*common, "--run-dir", str(tmp / f"mem{n}"), "--nproc-per-node", str(n)])
        print(
            f"{n} process(es), {epochs} epochs on {data}: peak summed PSS {peaks[n].pss:,.0f} MB, "
            f"peak summed anonymous {peaks[n].anon:,.0f} MB"
        )
    print(
        f"two processes / one: PSS {peaks[2].pss / peaks[1].pss:.2f}x, anonymous {peaks[2].anon / peaks[1].anon:.2f}x"
    )


# ------------------------------------------------------------------------ synthetic scale


def write_synthetic(path: Path, images: int, test_images: int = 10000, chunk: int = 65536) -> Path:
    """``images`` random 32x32x3 training images (and ``test_images`` test ones), 10 classes,
    written straight into a data file a chunk at a time (memory stays at one chunk)."""
    rng = np.random.default_rng(0)
    classes = [f"class{i}" for i in range(10)]
    with DataFileWriter(path, classes, (images, 3, 32, 32), (test_images, 3, 32, 32)) as writer:
        for split, n in (("train", images), ("test", test_images)):
            for lo in range(0, n, chunk):
                hi = min(n, lo + chunk)
                writer.arrays[f"{split}_images"][lo:hi] = rng.integers(0, 256, (hi - lo, 3, 32, 32), dtype=np.uint8)
                writer.arrays[f"{split}_labels"][lo:hi] = rng.integers(0, 10, hi - lo)
        return writer.commit()


def synthetic_mode(images: int, out: str | None, tmp: Path) -> None:
    path = Path(out) if out else tmp / f"synthetic-{images}{SUFFIX}"
    start = time.perf_counter()
    write_synthetic(path, images)
    size = path.stat().st_size / 1e9
    print(f"wrote {images:,} synthetic 32x32x3 images to {path} ({size:.2f} GB) in {time.perf_counter() - start:.1f} s")
    args = ["--data", str(path), "--run-dir", str(tmp / "synthetic-run"), "--epochs", "1", "--overwrite"]
    stdout, peak = train_in_child(args)
    seconds = float(re.search(r"Epoch\s+1/1: .*\| ([\d.]+)s", stdout).group(1))  # type: ignore[union-attr]
    print(
        f"one epoch ({TrainConfig().batch_size} per batch, tutorial recipe): {seconds:.1f} s, "
        f"{images / seconds:,.0f} images/s"
    )
    print(f"peak anonymous memory of the training process: {peak.anon:,.0f} MB (PSS {peak.pss:,.0f} MB)")
    if not out:
        path.unlink()
