"""ignite-mlp sweep on tiny data: the space file's checks, exact trial counts across workers, a
study continued after Ctrl-C, pruning, best.toml, the test split seen once; PostgreSQL with a
worker killed by SIGKILL when IGNITE_MLP_TEST_POSTGRES names a server (always in CI)."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna", reason="the sweep extra: pip install 'ignite_mlp[sweep]'")

from optuna.storages.journal import JournalFileBackend, JournalStorage  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

import ignite_mlp.data  # noqa: E402
from ignite_mlp import TrainConfig, train  # noqa: E402
from ignite_mlp.cli import main  # noqa: E402
from ignite_mlp.config.train_config import load_toml  # noqa: E402
from ignite_mlp.errors import TrainingInterrupted  # noqa: E402
from ignite_mlp.run.rundir import RunDir  # noqa: E402
from ignite_mlp.sweep import objective as objective_module  # noqa: E402

SPACE = """
[fixed]
epochs = {epochs}
hidden-sizes = [16]
batch-size = 8
tensorboard = false

[search.lr]
low = {low}
high = 0.2
log = true
"""


def _space(tmp_path: Path, epochs: int = 2, low: float = 0.01, text: str | None = None) -> Path:
    path = tmp_path / "space.toml"
    path.write_text(text if text is not None else SPACE.format(epochs=epochs, low=low))
    return path


def _sweep_args(tree: Path, space: Path, sweep_dir: Path, trials: int, *extra: str) -> list[str]:
    common = ["--data", str(tree), "--space", str(space), "--sweep-dir", str(sweep_dir), "--val-split", "9"]
    return ["sweep", *common, "--trials", str(trials), "--device", "cpu", "--seed", "0", *extra]


def _journal(sweep_dir: Path) -> optuna.Study:
    storage = JournalStorage(JournalFileBackend(str(sweep_dir / "journal.log")))
    return optuna.load_study(study_name=sweep_dir.name, storage=storage)


def _states(study: optuna.Study) -> list[TrialState]:
    return [t.state for t in study.get_trials(deepcopy=False)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[fixed]\nlearning-rate = 1\n[search.lr]\nlow = 0.1\nhigh = 1.0\n", "unknown option 'learning-rate'"),
        ("[search.lr]\nlow = 0.5\nhigh = 0.1\n", "[search.lr] is an empty range (low 0.5 >= high 0.1)"),
        ('[search.epochs]\nlow = "two"\nhigh = 5\n', "[search.epochs] low must be a number (got 'two')"),
        ("[search.optimizer]\nlow = 1\nhigh = 5\n", "[search.optimizer] value 1: --optimizer must be str"),
        ("[search.epochs]\nlow = 1.5\nhigh = 5.0\n", "[search.epochs] epochs takes whole numbers"),
        ("[search.seed]\nchoices = [0, 1]\n", "[search.seed] cannot be searched"),
        ("[search.lr]\nchoices = []\n", "[search.lr] choices must be a non-empty list"),
        ("[fixed]\nepochs = 2\n", "nothing to search"),
    ],
)
def test_space_file_errors_are_one_line_exit_2(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture, text: str, message: str
) -> None:
    space = _space(tmp_path, text=text)
    assert main(_sweep_args(tree, space, tmp_path / "sweep", 2)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "sweep").exists()  # nothing started, nothing written


def test_two_workers_finish_exactly_n_trials_and_the_test_split_is_seen_once(tree: Path, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    assert main(_sweep_args(tree, _space(tmp_path), sweep_dir, 3, "--jobs", "2", "--pruner", "none")) == 0
    study = _journal(sweep_dir)
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 3 and TrialState.RUNNING not in _states(study)
    assert len({t.user_attrs["pid"] for t in finished}) == 2  # both workers ran trials
    for t in finished:  # ordinary run directories, none of which read the test split
        history = json.loads((Path(t.user_attrs["run_dir"]) / "history.json").read_text())
        assert len(history["val_acc_epoch"]) == 2 and "test_acc" not in history
    best = json.loads((sweep_dir / "best.json").read_text())
    assert best["val_acc"] == study.best_value and best["trial"] == study.best_trial.number
    assert [r["trial"] for r in best["test_evaluations"]] == [best["trial"]] and best["test_acc"] is not None
    assert (sweep_dir / "optimization_history.png").stat().st_size > 0


def test_ctrl_c_then_the_same_command_continues_and_best_toml_reproduces(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    loaded = []  # every Dataset the sweep loads: the workers' must never have their test split read
    original_load = ignite_mlp.data.load_dataset

    def counting_load(*args, **kwargs):
        dataset = original_load(*args, **kwargs)
        counted = _CountingDataset(*(getattr(dataset, f) for f in _FIELDS))
        loaded.append(counted)
        return counted

    monkeypatch.setattr(ignite_mlp.data, "load_dataset", counting_load)
    calls = []
    real_train = objective_module.train

    def train_then_ctrl_c(*args, **kwargs):
        calls.append(kwargs["dataset"])  # the data set the trial trains on
        if len(calls) == 3:  # the third trial is stopped by Ctrl-C, as train() reports it
            raise TrainingInterrupted("run", "checkpoint")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(objective_module, "train", train_then_ctrl_c)
    sweep_dir = tmp_path / "sweep"
    cache = tmp_path / "cache"
    args = _sweep_args(tree, _space(tmp_path), sweep_dir, 4, "--pruner", "none", "--cache-dir", str(cache))
    assert main(args) == 130
    assert "run the same command" in capsys.readouterr().err
    # Continuing with another space would mix two searches in one study: refused before any trial.
    (tmp_path / "other").mkdir()
    other = _sweep_args(tree, _space(tmp_path / "other", epochs=3), sweep_dir, 4, "--pruner", "none")
    assert main(other) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "searches another space" in err
    before = {t.number: (t.value, t.datetime_complete) for t in _journal(sweep_dir).trials if t.value is not None}
    # The trials' data sets (not the start's look at the data, whose fingerprint covers both splits).
    assert len(before) == 2 and all(isinstance(d, _CountingDataset) and d.test_reads == 0 for d in calls)
    evaluations = []
    import ignite_mlp.inference.evaluate as evaluate_module

    real_evaluate = evaluate_module.evaluate
    monkeypatch.setattr(evaluate_module, "evaluate", lambda *a, **k: evaluations.append(a) or real_evaluate(*a, **k))
    assert main(args) == 0
    study = _journal(sweep_dir)
    assert len(calls) == 5 and all(d.test_reads == 0 for d in calls)  # the search never read the test split
    assert {t.number: (t.value, t.datetime_complete) for t in study.trials if t.number in before} == before
    assert _states(study).count(TrialState.COMPLETE) == 4 and _states(study).count(TrialState.FAIL) == 1
    # The report again, from the study alone: the test split is not evaluated a second time.
    assert main(["sweep", "--report", "--sweep-dir", str(sweep_dir)]) == 0
    assert len(evaluations) == 1
    # A trial's run records the sweep's decode cache, so evaluating it reads the same one.
    assert RunDir(sweep_dir / "trial-0000").read_config().config.cache_dir == str(cache)
    # best.toml is a run file train takes as is, and it reproduces the best trial's validation accuracy.
    best = json.loads((sweep_dir / "best.json").read_text())
    values = load_toml(sweep_dir / "best.toml")
    config = TrainConfig.from_recipe(values.pop("recipe", "tutorial"), **values, run_dir=str(tmp_path / "again"))
    again = train(config, write=lambda s: None)
    assert again.best_val_acc == pytest.approx(best["val_acc"])
    assert again.test_acc == pytest.approx(best["test_acc"])


_FIELDS = ("train_images", "train_labels", "test_images", "test_labels", "classes", "source")


class _CountingDataset(ignite_mlp.data.Dataset):
    """A Dataset that counts the reads of its test split."""

    test_reads = 0

    def __getattribute__(self, name: str):
        if name in ("test_images", "test_labels"):
            object.__setattr__(self, "test_reads", object.__getattribute__(self, "test_reads") + 1)
        return object.__getattribute__(self, name)


def test_pruning_stops_a_hopeless_trial_early(tree: Path, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    storage = JournalStorage(JournalFileBackend(str(sweep_dir / "journal.log")))
    study = optuna.create_study(study_name="sweep", storage=storage, direction="maximize")
    for lr in (0.1, 0.1, 0.1, 1e-6):  # three good trials to set the median, then a hopeless one
        study.enqueue_trial({"lr": lr})
    assert main(_sweep_args(tree, _space(tmp_path, epochs=4, low=1e-6), sweep_dir, 4)) == 0
    trials = _journal(sweep_dir).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3 + [TrialState.PRUNED]
    assert len(trials[3].intermediate_values) < 4  # stopped before its last epoch
    history = json.loads((Path(trials[3].user_attrs["run_dir"]) / "history.json").read_text())
    assert len(history["val_acc_epoch"]) < 4


# ----------------------------------------------------------------------------- PostgreSQL


@pytest.fixture
def postgres_url() -> str:
    url = os.environ.get("IGNITE_MLP_TEST_POSTGRES")
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must test the database path: .ci/run exports IGNITE_MLP_TEST_POSTGRES")
        pytest.skip("no PostgreSQL: set IGNITE_MLP_TEST_POSTGRES=postgresql://user:password@localhost/db")
    return url  # as the user gives it: no driver spelled in, Optuna's own tools take the same URL


def test_postgres_worker_killed_mid_trial_is_run_again(tree: Path, tmp_path: Path, postgres_url: str) -> None:
    study_name = f"test-{uuid.uuid4().hex[:8]}"
    space = _space(tmp_path, epochs=12)  # long enough trials to kill one mid-way
    sweep_dir = tmp_path / "sweep"
    args = _sweep_args(tree, space, sweep_dir, 2, "--pruner", "none", "--storage", postgres_url, "--study", study_name)
    args += ["--heartbeat-interval", "1", "--grace-period", "3"]
    command = [sys.executable, "-m", "ignite_mlp", *args]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    victim = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    other = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        study = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait for the victim to be inside a trial
            try:
                study = optuna.load_study(study_name=study_name, storage=postgres_url)
            except KeyError:
                time.sleep(0.5)
                continue
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if any(t.user_attrs.get("pid") == victim.pid for t in running):
                break
            time.sleep(0.5)
        else:
            pytest.fail("the first worker never started a trial")
        killed = next(t.number for t in study.get_trials(deepcopy=False) if t.user_attrs.get("pid") == victim.pid)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        output = other.communicate(timeout=300)[0].decode()
        assert other.returncode == 0, output
    finally:
        for process in (victim, other):
            if process.poll() is None:
                process.kill()
    trials = optuna.load_study(study_name=study_name, storage=postgres_url).get_trials(deepcopy=False)
    states = [t.state for t in trials]
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == 2
    assert trials[killed].state == TrialState.FAIL
    rerun = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert rerun and rerun[0].state == TrialState.COMPLETE and rerun[0].params == trials[killed].params
