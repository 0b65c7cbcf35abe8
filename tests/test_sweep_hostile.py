"""A hostile tour of ``ignite-mlp sweep``, one named case each: bad settings, folders, spaces and
variables refused in one line (exit 2, no traceback, nothing written); journals damaged in every
way a crash or a hand can damage them, recovered with the finished trials kept and the damage set
aside; workers killed by SIGKILL at random moments, on the journal and on PostgreSQL; four first
starts at once on a new database; Ctrl-C with short trials; a full disk; no secret written.

PostgreSQL cases skip with the reason when IGNITE_MLP_TEST_POSTGRES is unset (they fail when CI=true);
the full-disk and read-only cases need to mount a tmpfs (root), and skip with the reason elsewhere."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna", reason="the sweep extra: pip install 'ignite_mlp[sweep]'")

from optuna.storages.journal import JournalFileBackend, JournalStorage  # noqa: E402
from optuna.trial import TrialState  # noqa: E402
from sweep_helpers import (  # noqa: E402
    child_env,
    command,
    fresh_schema,
    journal_study,
    postgres_url,
    sweep_args,
    write_space,
)

from ignite_mlp.cli import main  # noqa: E402

# The spaces the package ships, as the folder on disk holds them (sorted, as the message lists them).
SHIPPED = ", ".join(
    sorted(p.stem for p in (Path(__file__).parents[1] / "ignite_mlp" / "sweep" / "spaces").glob("*.toml"))
)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def _files(root: Path) -> dict[str, str]:
    """Every file under ``root`` (links as their target), with a hash of its bytes."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            found[str(path)] = "-> " + os.readlink(path)
        elif path.is_file():
            found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_dir():
            found[str(path)] = "dir"
    return found


# ----------------------------------------------------------------------------- refused in one line


@dataclass(frozen=True)
class Refused:
    """A case: ``prepare(tree, folder)`` builds what it needs and returns the command's arguments;
    the error line must hold ``message``."""

    id: str
    prepare: Callable[[Path, Path], list[str]]
    message: str
    env: tuple[tuple[str, str], ...] = ()


def _run(tree: Path, folder: Path, *extra: str, space: str | None = None, trials: int = 2) -> list[str]:
    path = folder / "space.toml"
    if space is not None:
        path.write_text(space)
    elif not path.exists():
        write_space(folder)
    return sweep_args(tree, path, folder / "sweep", trials, *extra)


def _space(body: str) -> Callable[[Path, Path], list[str]]:
    return lambda tree, folder: _run(tree, folder, space=body)


def _with(*extra: str) -> Callable[[Path, Path], list[str]]:
    return lambda tree, folder: _run(tree, folder, *extra)


def _replace(flag: str, value: str) -> Callable[[Path, Path], list[str]]:
    def prepare(tree: Path, folder: Path) -> list[str]:
        args = _run(tree, folder)
        args[args.index(flag) + 1] = value
        return args

    return prepare


def _planted(make: Callable[[Path, Path], None], report: bool = False) -> Callable[[Path, Path], list[str]]:
    """A sweep folder with something planted in it by ``make(sweep_dir, outside)``."""

    def prepare(tree: Path, folder: Path) -> list[str]:
        sweep_dir, outside = folder / "sweep", folder / "outside"
        sweep_dir.mkdir()
        outside.mkdir()
        make(sweep_dir, outside)
        return ["sweep", "--report", "--sweep-dir", str(sweep_dir)] if report else _run(tree, folder)

    return prepare


def _link(name: str, target: str = "outside/target") -> Callable[[Path, Path], None]:
    def make(sweep_dir: Path, outside: Path) -> None:
        (sweep_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (sweep_dir / name).symlink_to(outside.parent / target)

    return make


def _sweep_dir_is_file(tree: Path, folder: Path) -> list[str]:
    (folder / "sweep").write_text("not a folder")
    return _run(tree, folder)


def _dangling_sweep_dir(tree: Path, folder: Path) -> list[str]:
    (folder / "sweep").symlink_to(folder / "nowhere")
    return _run(tree, folder)


def _report(*extra: str) -> Callable[[Path, Path], list[str]]:
    return lambda tree, folder: ["sweep", "--report", "--sweep-dir", str(folder / "sweep"), *extra]


def _empty_sweep_dir_report(tree: Path, folder: Path) -> list[str]:
    (folder / "sweep").mkdir()
    return ["sweep", "--report", "--sweep-dir", str(folder / "sweep")]


def _unknown_study_report(tree: Path, folder: Path) -> list[str]:
    sweep_dir = folder / "sweep"
    sweep_dir.mkdir()
    storage = JournalStorage(JournalFileBackend(str(sweep_dir / "journal.log")))
    optuna.create_study(study_name="sweep", storage=storage)
    return ["sweep", "--report", "--sweep-dir", str(sweep_dir), "--study", "another"]


def _not_ours_report(tree: Path, folder: Path) -> list[str]:
    """A study Optuna made without the sweep: nothing to report."""
    sweep_dir = folder / "sweep"
    sweep_dir.mkdir()
    storage = JournalStorage(JournalFileBackend(str(sweep_dir / "journal.log")))
    optuna.create_study(study_name="sweep", storage=storage)
    return ["sweep", "--report", "--sweep-dir", str(sweep_dir)]


def _continued(**changed: object) -> Callable[[Path, Path], list[str]]:
    """A study the sweep started (its record as the sweep keeps it), continued with something else."""

    def prepare(tree: Path, folder: Path) -> list[str]:
        import tomllib

        from ignite_mlp.data import load_dataset

        args = _run(tree, folder)
        sweep_dir = folder / "sweep"
        sweep_dir.mkdir()
        storage = JournalStorage(JournalFileBackend(str(sweep_dir / "journal.log")))
        study = optuna.create_study(study_name="sweep", storage=storage, direction="maximize")
        record = {
            "data": str(tree),
            "data_fingerprint": load_dataset(tree).fingerprint,
            "val_split": 9,
            "space": tomllib.loads((folder / "space.toml").read_text()),
            "precision": "fp32",
            "precision_reason": "test",
            "settings": {},
        }
        study.set_user_attr("sweep", {**record, **changed})
        return args

    return prepare


def _foreign_study(direction: str, finished: bool) -> Callable[[Path, Path], list[str]]:
    """A study of the sweep's name made with Optuna alone."""

    def prepare(tree: Path, folder: Path) -> list[str]:
        args = _run(tree, folder)
        (folder / "sweep").mkdir()
        storage = JournalStorage(JournalFileBackend(str(folder / "sweep" / "journal.log")))
        study = optuna.create_study(study_name="sweep", storage=storage, direction=direction)
        if finished:
            study.add_trial(optuna.trial.create_trial(value=1.0))
        return args

    return prepare


SECRET = "s3cr3t-Pa55"
GOOD = "[search.lr]\nlow = 0.01\nhigh = 0.2\n"

REFUSED = [
    # settings
    Refused("val-split-0", _replace("--val-split", "0"), "--val-split 0: a sweep scores its trials on a validation"),
    Refused("val-split-negative", _replace("--val-split", "-5"), "--val-split -5: give a count"),
    Refused("val-split-inf", _replace("--val-split", "inf"), "--val-split inf: give a count"),
    Refused("val-split-nan", _replace("--val-split", "nan"), "--val-split nan: give a count"),
    Refused("val-split-not-whole", _replace("--val-split", "2.5"), "--val-split 2.5: give a count"),
    Refused("val-split-every-image", _replace("--val-split", "36"), "holds out 36 of the 36 training images"),
    Refused("val-split-empties-a-class", _replace("--val-split", "34"), "holds out all 12 training images of class"),
    Refused("jobs-0", _with("--jobs", "0"), "--jobs must be >= 1"),
    Refused("jobs-beyond-cores-and-memory", _with("--jobs", "4096"), "workers (one a core, about 0.7 GB each)"),
    Refused("trials-0", _replace("--trials", "0"), "--trials must be >= 1"),
    Refused("pruner-unknown", _with("--pruner", "mean"), "--pruner must be one of"),
    Refused("seed-negative", _replace("--seed", "-1"), "--seed must be in [0, 2**32 - 1]"),
    Refused("seed-too-large", _replace("--seed", str(2**32)), "--seed must be in [0, 2**32 - 1]"),
    Refused("storage-not-a-url", _with("--storage", "runs/db"), "give a database URL"),
    Refused("sqlite-with-two-workers", _with("--storage", "sqlite:///x.db", "--jobs", "2"), "SQLite locks"),
    Refused("grace-below-heartbeat", _with("--heartbeat-interval", "60", "--grace-period", "30"), "must exceed"),
    Refused("study-name-over-512", _with("--study", "s" * 600), "a study's name holds at most 512"),
    # the sweep folder
    Refused("sweep-dir-is-a-file", _sweep_dir_is_file, "is a file, not a folder"),
    Refused("sweep-dir-is-a-dangling-link", _dangling_sweep_dir, "cannot be used (No such file or directory)"),
    Refused("trial-folders-of-a-study-gone", _planted(lambda d, o: (d / "trial-0000").mkdir()), "holds trial-0000, a trial study 'sweep' never ran"),  # noqa: E501
    Refused("journal-is-a-folder", _planted(lambda d, o: (d / "journal.log").mkdir()), "is not a file (a folder?)"),
    Refused("journal-is-a-dangling-link", _planted(_link("journal.log")), "journal.log is a symbolic link"),
    Refused("journal-lock-is-a-planted-link", _planted(_link("journal.log.lock")), "journal.log.lock is a symbolic"),
    Refused("locks-folder-is-a-link", _planted(_link(".locks", "outside")), ".locks is a symbolic link"),
    Refused("lock-file-is-a-link", _planted(_link(".locks/trial-0000.lock")), "trial-0000.lock is a symbolic link"),
    Refused("trial-folder-is-a-link", _planted(_link("trial-0000", "outside")), "trial-0000 is a symbolic link"),
    Refused("best-json-is-a-link", _planted(_link("best.json")), "best.json is a symbolic link"),
    Refused("sweep-json-is-a-link", _planted(_link("sweep.json")), "sweep.json is a symbolic link"),
    Refused("report-on-a-link-in-the-folder", _planted(_link("journal.log"), report=True), "is a symbolic link"),
    Refused("report-on-a-missing-folder", _report(), "no such folder"),
    Refused("report-on-a-folder-without-journal", _empty_sweep_dir_report, "no sweep there (journal.log missing)"),
    Refused("report-on-an-unknown-study", _unknown_study_report, "--study another: no such study"),
    Refused("report-on-a-study-not-made-by-the-sweep", _not_ours_report, "was not made by ignite-mlp sweep"),
    # a continued study
    Refused("continued-on-other-data", _continued(data_fingerprint="0" * 64), "ran its trials on other data"),
    Refused("continued-with-another-split", _continued(val_split=6), "scores its trials on 6 held-out images"),
    Refused("continued-with-another-space", _continued(space={"search": {"lr": {"low": 0.1, "high": 0.5}}}), "searches another space"),  # noqa: E501
    Refused("joining-a-study-that-minimises", _foreign_study("minimize", False), "not made by ignite-mlp sweep"),
    Refused("joining-a-study-with-others-trials", _foreign_study("maximize", True), "not made by ignite-mlp sweep"),
    # the space
    Refused("space-missing-names-the-shipped", _replace("--space", "nope.toml"), f"one the project ships: {SHIPPED}"),
    Refused("space-misspelt-shipped-name", _replace("--space", "tutorail"), f"one the project ships: {SHIPPED}"),
    Refused("space-not-toml", _space("[search.lr\n"), "not valid TOML"),
    Refused("int-step-not-whole", _space("[search.epochs]\nlow = 1\nhigh = 3\nstep = 0.5\n"), "give a whole step"),
    Refused("searched-under-two-spellings", _space(GOOD + "[search.batch-size]\nchoices = [8]\n[search.batch_size]\nchoices = [4]\n"), "batch-size is searched twice"),  # noqa: E501
    Refused("fixed-under-two-spellings", _space('[fixed]\nbatch-size = 8\nbatch_size = 4\n' + GOOD), "[fixed] sets batch-size twice"),  # noqa: E501
    Refused("space-sets-device", _space('[fixed]\ndevice = "cpu"\n' + GOOD), "'device' is set by the sweep"),
    Refused("space-sets-cache-dir", _space('[fixed]\ncache-dir = "c"\n' + GOOD), "'cache-dir' is set by the sweep"),
    Refused("space-sets-data", _space('[fixed]\ndata = "/tmp/d"\n' + GOOD), "'data' is set by the sweep"),
    Refused("space-searches-val-split", _space("[search.val-split]\nchoices = [3, 6]\n"), "is set by the sweep"),
    Refused("step-longer-than-range", _space("[search.batch-size]\nlow = 4\nhigh = 8\nstep = 16\n"), "longer than the range"),  # noqa: E501
    Refused("high-off-the-grid", _space("[search.batch-size]\nlow = 4\nhigh = 10\nstep = 4\n"), "make high 8"),
    Refused("momentum-0-only-with-nesterov", _space("[search.momentum]\nchoices = [0.0, 0.9]\n[search.nesterov]\nchoices = [false, true]\n"), "the trial with momentum = 0.0, nesterov = True"),  # noqa: E501
    Refused("crop-padding-against-the-images", _space('[fixed]\naugment = "crop"\n[search.crop-padding]\nlow = 1\nhigh = 8\n'), "on this data (3x8x8 images)"),  # noqa: E501
    Refused("misspelt-option-did-you-mean", _space("[fixed]\nepoch = 2\n" + GOOD), "did you mean 'epochs'?"),
    Refused("misspelt-searched-option", _space("[search.weight-decy]\nlow = 0.0\nhigh = 0.1\n"), "did you mean 'weight-decay'?"),  # noqa: E501
    Refused("log-range-from-zero", _space("[search.lr]\nlow = 0.0\nhigh = 0.1\nlog = true\n"), "a log range needs low > 0"),  # noqa: E501
    Refused("choices-empty", _space("[search.lr]\nchoices = []\n"), "choices must be a non-empty list"),
    Refused("seed-searched", _space("[search.seed]\nchoices = [0, 1]\n"), "cannot be searched"),
    Refused("unknown-section", _space("[serach.lr]\nlow = 0.1\nhigh = 0.2\n"), "unknown section 'serach'"),
    Refused("nothing-searched", _space("[fixed]\nepochs = 1\n"), "nothing to search"),
    # the limits' variables
    Refused("max-pixels-1e400", _with(), "IGNITE_MLP_MAX_PIXELS=1e400: must be a positive whole number", (("IGNITE_MLP_MAX_PIXELS", "1e400"),)),  # noqa: E501
    Refused("max-pixels-1.5e0", _with(), "IGNITE_MLP_MAX_PIXELS=1.5e0: must be a positive whole number", (("IGNITE_MLP_MAX_PIXELS", "1.5e0"),)),  # noqa: E501
    Refused("max-members-not-a-number", _with(), "IGNITE_MLP_MAX_MEMBERS=lots", (("IGNITE_MLP_MAX_MEMBERS", "lots"),)),
    # secrets in a URL that cannot be opened: said without them
    Refused("password-in-the-url-not-shown", _with("--storage", f"postgresql://me:{SECRET}@127.0.0.1:1/db"), "postgresql://me:***@127.0.0.1:1/db"),  # noqa: E501
    Refused("password-query-not-shown", _with("--storage", f"postgresql://me@127.0.0.1:1/db?password={SECRET}"), "?password=***"),  # noqa: E501
    Refused("driver-missing-said-without-secret", _with("--storage", f"mysql://me:{SECRET}@127.0.0.1:1/db"), "mysql://me:***@"),  # noqa: E501
]  # fmt: skip


@pytest.mark.parametrize("case", REFUSED, ids=lambda c: c.id)
def test_refused_in_one_line(
    case: Refused, tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in case.env:
        monkeypatch.setenv(name, value)
    folder = tmp_path / "case"
    folder.mkdir()
    args = case.prepare(tree, folder)
    before = _files(tmp_path)
    assert main(args) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.count("\n") == 1 and case.message in err and "Traceback" not in err, err
    assert SECRET not in err + captured.out
    assert _files(tmp_path) == before  # nothing made, nothing changed, nothing written through a link


# ----------------------------------------------------------------------------- a damaged journal


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One real sweep of 3 finished trials (journal and trial folders), copied by each case."""
    from conftest import make_tree

    root = tmp_path_factory.mktemp("finished")
    tree = make_tree(root / "tree")
    os.environ.setdefault("IGNITE_MLP_CACHE", str(root / "cache"))
    args = sweep_args(tree, write_space(root, epochs=1), root / "sweep", 3, "--pruner", "none")
    assert main(args) == 0
    return tree, root / "sweep"


def _copy(finished_sweep: tuple[Path, Path], tmp_path: Path) -> Path:
    sweep_dir = tmp_path / "sweep"
    shutil.copytree(finished_sweep[1], sweep_dir, symlinks=True)
    return sweep_dir


def _last_record_start(data: bytes) -> int:
    return data.rstrip(b"\n").rfind(b"\n") + 1


DAMAGE = {
    # what a crash or a full disk leaves: the last record cut short
    "last-record-cut-short": lambda d: d[: _last_record_start(d) + 17],
    "last-record-cut-before-its-newline": lambda d: d[:-1],
    # what a hand, a bad copy or a disk can leave
    "a-line-that-is-not-json-at-the-end": lambda d: d + b"this is not json\n",
    "a-json-array-at-the-end": lambda d: d + b"[1, 2, 3]\n",
    "json-without-op-code": lambda d: d + b'{"worker_id": "w", "study_id": 0}\n',
    "an-unknown-op-code": lambda d: d + b'{"op_code": 99, "worker_id": "w"}\n',
    "a-record-optuna-cannot-apply": lambda d: d + b'{"op_code": 4, "worker_id": "w", "study_id": 0}\n',
    "binary-garbage-at-the-end": lambda d: d + bytes(range(256)) * 4,
    "nul-bytes-at-the-end": lambda d: d + b"\0" * 512,
    "an-empty-line-at-the-end": lambda d: d + b"\n",
    "a-bad-line-in-the-middle": lambda d: d[: _last_record_start(d)] + b"{broken\n" + d[_last_record_start(d) :],
    "cut-then-glued-by-optunas-own-append": None,  # built in the test: Optuna's backend appends after a cut
}


@pytest.mark.parametrize("kind", DAMAGE, ids=str)
def test_a_damaged_journal_is_recovered_and_its_damage_set_aside(
    kind: str, finished_sweep: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    sweep_dir = _copy(finished_sweep, tmp_path)
    journal = sweep_dir / "journal.log"
    sound = journal.read_bytes()
    kept = {t.number: t.value for t in journal_study(sweep_dir).get_trials(states=FINISHED)}
    if DAMAGE[kind] is None:
        journal.write_bytes(sound[:-5])
        JournalFileBackend(str(journal)).append_logs(
            [{"op_code": 2, "worker_id": "w", "study_id": 0, "user_attr": {"k": 1}}]
        )
    else:
        journal.write_bytes(DAMAGE[kind](sound))
    damaged = journal.read_bytes()
    capsys.readouterr()
    assert main(["sweep", "--report", "--sweep-dir", str(sweep_dir)]) == 0
    err = capsys.readouterr().err
    (note,) = [line for line in err.splitlines() if "journal.log: line" in line]
    backup = sweep_dir / note.rsplit(" to ", 1)[1]
    # Nothing lost: what was there is the part kept (the journal goes on from it: the report's own
    # records follow) and the backup, byte for byte.
    moved = backup.read_bytes()
    assert moved and damaged.endswith(moved) and journal.read_bytes().startswith(damaged[: len(damaged) - len(moved)])
    again = {t.number: t.value for t in journal_study(sweep_dir).get_trials(states=FINISHED)}
    expected = kept if kind != "a-bad-line-in-the-middle" else {n: v for n, v in kept.items() if n in again}
    assert again == expected and len(again) >= 2  # Optuna's own reader: the finished trials are there


def test_a_journal_cut_at_every_byte_of_its_last_record_loses_only_that_record(
    finished_sweep: tuple[Path, Path], tmp_path: Path
) -> None:
    from ignite_mlp.sweep.journal import SweepJournal

    sweep_dir = _copy(finished_sweep, tmp_path)
    journal = sweep_dir / "journal.log"
    sound = journal.read_bytes()
    start = _last_record_start(sound)
    whole = JournalStorage(JournalFileBackend(str(journal)))
    expected = [(t.number, t.state, t.value) for t in whole.get_all_trials(0)]
    for cut in range(start, len(sound)):
        journal.write_bytes(sound[:cut])
        for backup in sweep_dir.glob("journal.log.damaged-*"):
            backup.unlink()
        backend = SweepJournal(journal)
        note = backend.mend()
        assert (note is None) == (cut == start), cut  # a cut on the line's start is a sound journal
        assert journal.read_bytes() == sound[:start], cut
        if note:
            assert (sweep_dir / note.rsplit(" to ", 1)[1]).read_bytes() == sound[start:cut]
        # then an append (what the next worker does) reads back whole in Optuna's own reader
        backend.append_logs([{"op_code": 2, "worker_id": "w", "study_id": 0, "user_attr": {"after": cut}}])
        storage = JournalStorage(JournalFileBackend(str(journal)))
        assert storage.get_study_user_attrs(0)["after"] == cut
        trials = [(t.number, t.state, t.value) for t in storage.get_all_trials(0)]
        assert [t for t in trials if t[1] in FINISHED] == [t for t in expected if t[1] in FINISHED][: len(trials)]


def test_an_unwritable_journal_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, tree: Path) -> None:
    ro = _mount_tmpfs(tmp_path / "ro", "1m")
    (ro / "sweep").mkdir()
    (ro / "sweep" / "journal.log").write_bytes(b"")
    subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
    try:
        assert main(_run(tree, tmp_path, "--sweep-dir", str(ro / "sweep"))) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "cannot be written" in err, err
    finally:
        subprocess.run(["umount", str(ro)], check=False)


# ----------------------------------------------------------------------------- kill -9, Ctrl-C, a full disk


def _mount_tmpfs(where: Path, size: str) -> Path:
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    return where


def _finished(study: optuna.Study) -> list:
    return study.get_trials(deepcopy=False, states=FINISHED)


def _kill_then_finish(args: list[str], load: Callable[[], optuna.Study], seed: int, trials: int) -> optuna.Study:
    """Start the sweep, SIGKILL it at a random moment once it is inside its trials, run the same
    command again: the study ends with exactly ``trials`` finished trials and none left running."""
    rng = random.Random(seed)
    victim = subprocess.Popen(command(*args), env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and victim.poll() is None:
            try:
                if load().get_trials(deepcopy=False):
                    break
            except (KeyError, ValueError, OSError):
                pass
            time.sleep(0.1)
        time.sleep(rng.uniform(0.0, 2.5))  # somewhere in a trial, between trials, mid-write
        victim.send_signal(signal.SIGKILL)
    finally:
        victim.kill()
        victim.wait()
    assert main(args) == 0  # the same command again
    study = load()
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert len(_finished(study)) == trials and TrialState.RUNNING not in states, states
    return study


@pytest.mark.parametrize("seed", [1, 2], ids=lambda s: f"journal-kill-9-at-random-moment-{s}")
def test_kill_9_at_a_random_moment_on_the_journal(seed: int, tree: Path, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    args = sweep_args(tree, write_space(tmp_path, epochs=2), sweep_dir, 3, "--pruner", "none")
    _kill_then_finish(args, lambda: journal_study(sweep_dir), seed, 3)


@pytest.mark.parametrize("seed", [1], ids=lambda s: f"postgres-kill-9-at-random-moment-{s}")
def test_kill_9_at_a_random_moment_on_postgres(seed: int, tree: Path, tmp_path: Path) -> None:
    url = postgres_url()
    name = f"kill-{uuid.uuid4().hex[:8]}"
    extra = ["--pruner", "none", "--storage", url, "--study", name, "--heartbeat-interval", "1", "--grace-period", "2"]
    args = sweep_args(tree, write_space(tmp_path, epochs=2), tmp_path / "sweep", 3, *extra)
    _kill_then_finish(args, lambda: optuna.load_study(study_name=name, storage=url), seed, 3)


_FIRST_START = """
import sys, time
from ignite_mlp.sweep.settings import SweepSettings
from ignite_mlp.sweep.storage import open_study
url, at = sys.argv[1], float(sys.argv[2])
time.sleep(max(0.0, at - time.time()))  # all four start the same instant
study = open_study(SweepSettings(data="d", space="s", storage=url, study="together", sweep_dir=sys.argv[3]))
trial = study.ask()
study.tell(trial, 1.0)
"""


def _four_first_starts(url: str, tmp_path: Path) -> list[subprocess.CompletedProcess]:
    """Four sweep workers' first start (the storage opened, the tables and the study made, a trial
    told) at the same instant on ``url``."""
    at = str(time.time() + 3.0)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _FIRST_START, url, at, str(tmp_path / "sweep")],
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=120) for p in processes]
    return [
        subprocess.CompletedProcess(p.args, p.returncode, o, e) for p, (o, e) in zip(processes, outputs, strict=True)
    ]


def test_four_first_starts_at_once_on_a_new_postgres_database_all_get_in(tmp_path: Path) -> None:
    url = fresh_schema(postgres_url())  # no tables yet: a new database to Optuna
    done = _four_first_starts(url, tmp_path)
    assert all(d.returncode == 0 for d in done), [d.stderr[-400:] for d in done]
    assert len(_finished(optuna.load_study(study_name="together", storage=url))) == 4


def test_four_first_starts_at_once_on_a_new_sqlite_file_all_get_in(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    done = _four_first_starts(url, tmp_path)
    assert all(d.returncode == 0 for d in done), [d.stderr[-400:] for d in done]
    assert len(_finished(optuna.load_study(study_name="together", storage=url))) == 4


@pytest.mark.parametrize("jobs", [1, 2], ids=lambda j: f"ctrl-c-stops-at-the-first-press-jobs-{j}")
def test_ctrl_c_stops_at_the_first_press_with_short_trials(jobs: int, tree: Path, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    args = sweep_args(tree, write_space(tmp_path, epochs=1), sweep_dir, 40, "--pruner", "none", "--jobs", str(jobs))
    sweep = subprocess.Popen(command(*args), env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (sweep_dir.exists() and _done_count(sweep_dir) >= 1):
            time.sleep(0.1)
        sweep.send_signal(signal.SIGINT)  # one press
        pressed = _done_count(sweep_dir)
        err = sweep.communicate(timeout=60)[1]
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 130 and "sweep stopped" in err, err
    assert _done_count(sweep_dir) <= pressed + jobs  # at most the trials already running end


def _done_count(sweep_dir: Path) -> int:
    try:
        return len(_finished(journal_study(sweep_dir)))
    except (KeyError, OSError, ValueError):
        return 0


def test_a_full_disk_mid_sweep_is_one_line_and_the_study_survives(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    disk = _mount_tmpfs(tmp_path / "disk", "4m")
    try:
        sweep_dir = disk / "sweep"
        args = sweep_args(tree, write_space(tmp_path, epochs=1), sweep_dir, 1, "--pruner", "none")
        assert main(args) == 0
        with open(disk / "filler", "wb") as filler:  # the disk fills up
            try:
                while True:
                    filler.write(b"\0" * 65536)
                    filler.flush()
            except OSError:
                pass
        capsys.readouterr()
        assert main(sweep_args(tree, tmp_path / "space.toml", sweep_dir, 3, "--pruner", "none")) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "No space left on device" in err, err
        (disk / "filler").unlink()
        assert len(_finished(journal_study(sweep_dir))) >= 1  # the study opens in Optuna's own API
        assert main(sweep_args(tree, tmp_path / "space.toml", sweep_dir, 3, "--pruner", "none")) == 0
        assert len(_finished(journal_study(sweep_dir))) == 3
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# ----------------------------------------------------------------------------- what is written, what is shown


def test_no_secret_is_written_on_postgres(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    url = postgres_url()
    password = __import__("urllib.parse").parse.urlsplit(url).password
    assert password, "the test database URL needs a password to test its hiding"
    sweep_dir = tmp_path / "sweep"
    extra = ["--storage", url, "--study", f"secret-{uuid.uuid4().hex[:8]}", "--pruner", "none"]
    assert main(sweep_args(tree, write_space(tmp_path, epochs=1), sweep_dir, 1, *extra)) == 0
    captured = capsys.readouterr()
    shown = [captured.out + captured.err] + [
        (sweep_dir / n).read_text() for n in ("sweep.json", "best.json", "best.toml")
    ]
    for text in shown:  # the URL appears, always without its password
        assert f":{password}@" not in text and f"password={password}" not in text
    assert ":***@" in shown[0] and ":***@" in shown[1]


def test_defaults_work_on_a_small_data_set(tree: Path, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    args = ["sweep", "--data", str(tree), "--space", str(write_space(tmp_path, epochs=1)), "--trials", "1"]
    assert main([*args, "--sweep-dir", str(sweep_dir), "--device", "cpu"]) == 0
    assert json.loads((sweep_dir / "sweep.json").read_text())["val_split"] == 3  # a tenth of 36 images


def test_a_status_line_is_redrawn_on_a_terminal_and_plain_lines_go_to_a_file() -> None:
    import io

    from ignite_mlp.sweep.progress import Display

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal, log = Terminal(), io.StringIO()
    for stream in (terminal, log):
        display = Display(stream)
        display.status("0 of 2 trials finished | trial 0 epoch 1/2 | best -")
        display.status("0 of 2 trials finished | trial 0 epoch 2/2 | best -")
        display.line("trial 0: 50.00% | best 50.00% (trial 0) | 1 of 2 trials to go")
        display.close()
    shown = terminal.getvalue()
    assert shown.count("\r\033[K") >= 3 and "epoch 2/2" in shown and shown.endswith("\r\033[K")
    plain = log.getvalue()
    assert "\r" not in plain and "\033" not in plain
    assert plain.splitlines() == [  # the second status came within FILE_EVERY seconds: not repeated
        "0 of 2 trials finished | trial 0 epoch 1/2 | best -",
        "trial 0: 50.00% | best 50.00% (trial 0) | 1 of 2 trials to go",
    ]
