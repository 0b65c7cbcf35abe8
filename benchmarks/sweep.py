"""How fast ``ignite-mlp sweep`` searches on this machine, and how many epochs pruning saves.

    python benchmarks/sweep.py [--data ../shared/data/cifar10-jpg.tar.gz] [--trials 12] [--epochs 50]

Three sweeps of the tutorial recipe on the pack, each a fresh study in a temporary folder, the
command run as users run it (a child process, the journal file, the default validation split of
5000 images), with the same search space and ``--seed``:

1. ``--jobs 1 --pruner none``: trials per hour of one worker;
2. ``--jobs 2 --pruner none``: trials per hour of two workers splitting the cores;
3. ``--jobs 2 --pruner median``: the same search pruned: epochs run against sweep 2's, and the
   best validation accuracy each reached (pruning pays only if that stays comparable).

It prints the CPU, the core count and one line per sweep; the trials' own lines are kept in
each sweep's ``sweep.log``. Counts come from Optuna's own API on each study.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

# Children import this checkout's ignite_mlp, as the benchmark itself does.
_ROOT = str(Path(__file__).resolve().parents[1])

SPACE = """
[fixed]
recipe = "tutorial"
epochs = {epochs}
tensorboard = false

[search.lr]
low = 1e-4
high = 1e-1
log = true

[search.weight-decay]
low = 1e-6
high = 1e-2
log = true

[search.batch-size]
choices = [128, 256, 512]
"""


def cpu_name() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it (platform's answer elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_sweep(data: str, space: Path, sweep_dir: Path, trials: int, jobs: int, pruner: str, seed: int) -> float:
    """Run one sweep to ``trials`` finished trials; return its wall-clock seconds."""
    command = [sys.executable, "-m", "ignite_mlp", "sweep", "--data", data, "--space", str(space)]
    command += ["--sweep-dir", str(sweep_dir), "--trials", str(trials), "--jobs", str(jobs)]
    command += ["--pruner", pruner, "--seed", str(seed), "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": _ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    sweep_dir.mkdir(parents=True)
    start = time.perf_counter()
    with open(sweep_dir / "sweep.log", "w") as log:
        subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - start


def summary(sweep_dir: Path) -> dict[str, float]:
    """Finished, pruned and complete trials, epochs run over all of them, and the best value."""
    storage = JournalStorage(JournalFileBackend(str(sweep_dir / "journal.log")))
    study = optuna.load_study(study_name=sweep_dir.name, storage=storage)
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    complete = [t for t in finished if t.state == TrialState.COMPLETE]
    return {
        "finished": len(finished),
        "pruned": len(finished) - len(complete),
        "epochs": sum(len(t.intermediate_values) for t in finished),
        "best": max((t.value for t in complete), default=float("nan")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/cifar10-jpg.tar.gz", help="the CIFAR-10 pack")
    parser.add_argument("--trials", type=int, default=12, help="finished trials per sweep (default: 12)")
    parser.add_argument("--epochs", type=int, default=50, help="epochs per trial: the tutorial's 50")
    parser.add_argument("--seed", type=int, default=0, help="the sampler's seed, the same for every sweep")
    parser.add_argument("--keep", help="keep the sweeps in this folder (default: a temporary one)")
    args = parser.parse_args()
    if not Path(args.data).exists():
        sys.exit(f"benchmarks/sweep.py: no data at {args.data}; pass --data")
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; {args.trials} trials of {args.epochs} epochs per sweep")
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="sweep-bench-"))
    space = root / "space.toml"
    root.mkdir(parents=True, exist_ok=True)
    space.write_text(SPACE.format(epochs=args.epochs))
    # Decode the pack into the cache first, so no sweep pays for it.
    decode = f"from ignite_mlp.data import load_dataset; load_dataset({args.data!r}, progress='off')"
    subprocess.run(
        [sys.executable, "-c", decode],
        env={**os.environ, "PYTHONPATH": _ROOT},
        check=True,
    )
    results = {}
    for name, jobs, pruner in (("jobs1", 1, "none"), ("jobs2", 2, "none"), ("jobs2-median", 2, "median")):
        seconds = run_sweep(args.data, space, root / name, args.trials, jobs, pruner, args.seed)
        results[name] = {**summary(root / name), "seconds": seconds}
        r = results[name]
        print(
            f"--jobs {jobs} --pruner {pruner:6}: {r['finished']:.0f} trials in {seconds / 60:.1f} min = "
            f"{3600 * r['finished'] / seconds:.1f} trials/hour; {r['epochs']:.0f} epochs run, "
            f"{r['pruned']:.0f} pruned; best validation accuracy {r['best']:.2f}%"
        )
    plain, pruned = results["jobs2"], results["jobs2-median"]
    saved = plain["epochs"] - pruned["epochs"]
    print(
        f"pruning (median) saved {saved:.0f} of {plain['epochs']:.0f} epochs ({100 * saved / plain['epochs']:.0f}%), "
        f"{(plain['seconds'] - pruned['seconds']) / 60:.1f} min; best validation accuracy "
        f"{pruned['best']:.2f}% against {plain['best']:.2f}% without pruning"
    )
    print(f"sweeps: {root}")


if __name__ == "__main__":
    main()
