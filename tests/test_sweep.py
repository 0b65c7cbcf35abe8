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

from conftest import CountingDataset  # noqa: E402  (counts the reads of the test split)
from optuna.storages.journal import JournalFileBackend, JournalStorage  # noqa: E402
from optuna.trial import TrialState  # noqa: E402
from sweep_helpers import journal_study, sweep_args, write_space  # noqa: E402
from sweep_helpers import postgres_url as _postgres_url  # noqa: E402

import ignite_mlp.data  # noqa: E402
from ignite_mlp import TrainConfig, train  # noqa: E402
from ignite_mlp.cli import main  # noqa: E402
from ignite_mlp.config.train_config import load_toml  # noqa: E402
from ignite_mlp.errors import TrainingInterrupted  # noqa: E402
from ignite_mlp.run.rundir import RunDir  # noqa: E402
from ignite_mlp.sweep import objective as objective_module  # noqa: E402

_space = write_space
_sweep_args = sweep_args
_journal = journal_study


def _states(study: optuna.Study) -> list[TrialState]:
    return [t.state for t in study.get_trials(deepcopy=False)]


_LR = "[search.lr]\nlow = 0.1\nhigh = 1.0\n"


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
        (f"{_LR}[[enqueue]]\nlr = 2.0\n", "[[enqueue]] 1: lr = 2.0 is not a value [search.lr] can give"),
        (f"{_LR}[[enqueue]]\nlr = 0.5\n[[enqueue]]\nepochs = 3\n", "[[enqueue]] 2: 'epochs' is not searched"),
        (f"enqueue = 3\n{_LR}", "enqueue must be an array of tables, each written [[enqueue]]"),
        (f"{_LR}[[enqueue]]\nlr = true\n", "lr = True is not a value [search.lr] can give"),
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


def test_two_reports_finishing_at_once_evaluate_the_test_split_once(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    import ignite_mlp.inference.evaluate as evaluate_module
    import ignite_mlp.sweep.report as report_module

    sweep_dir = tmp_path / "sweep"
    monkeypatch.setattr(report_module, "write_report", lambda *args, **kwargs: None)  # the sweep ends unreported
    assert main(_sweep_args(tree, _space(tmp_path, epochs=1), sweep_dir, 1, "--pruner", "none")) == 0
    monkeypatch.undo()
    calls = []
    real_evaluate = evaluate_module.evaluate

    def slow_evaluate(*args, **kwargs):
        calls.append(args)
        time.sleep(0.5)  # the other report arrives while this one evaluates
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "evaluate", slow_evaluate)
    studies = [_journal(sweep_dir) for _ in range(2)]  # as two sweep commands each open it
    results = []

    def report(study: optuna.Study) -> None:
        results.append(report_module.evaluate_best_once(study, study.best_trial, sweep_dir, print))

    threads = [threading.Thread(target=report, args=(s,)) for s in studies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and results[0] == results[1] and results[0]["test_acc"] is not None
    assert len(report_module.test_evaluations(_journal(sweep_dir))) == 1


def test_ctrl_c_then_the_same_command_continues_and_best_toml_reproduces(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    loaded = []  # every Dataset the sweep loads: the workers' must never have their test split read
    original_load = ignite_mlp.data.load_dataset

    def counting_load(*args, **kwargs):
        dataset = original_load(*args, **kwargs)
        counted = CountingDataset(*(getattr(dataset, f) for f in _FIELDS))
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
    assert len(before) == 2 and all(isinstance(d, CountingDataset) and d.test_reads == 0 for d in calls)
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
    return _postgres_url()  # as the user gives it: no driver spelled in, Optuna's own tools take the same URL


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
        while time.monotonic() < deadline:  # wait for the victim to be inside a trial, its values drawn
            try:
                study = optuna.load_study(study_name=study_name, storage=postgres_url)
            except KeyError:
                time.sleep(0.5)
                continue
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            # A trial killed before its values are drawn has none to run again: the rerun draws its own.
            if any(t.user_attrs.get("pid") == victim.pid and t.params for t in running):
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
    # The URL as given opens in optuna-dashboard (psycopg 3, SQLAlchemy's default driver).
    _same_trials(_dashboard_reads(postgres_url, study_name), trials)


# ----------------------------------------------------------------------------- what a sweep hands back


def _toml(path: Path) -> dict:
    import tomllib

    return tomllib.loads(path.read_text())


def test_best_toml_from_another_folder_reproduces_the_trials_history(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths, as a user types them
    write_space(tmp_path)
    args = ["sweep", "--data", "tree", "--space", "space.toml", "--sweep-dir", "sweep", "--trials", "2"]
    assert main([*args, "--device", "cpu", "--seed", "0", "--pruner", "none"]) == 0
    sweep_dir = tmp_path / "sweep"
    assert all(Path(t.user_attrs["run_dir"]).is_absolute() for t in _journal(sweep_dir).trials)
    best = json.loads((sweep_dir / "best.json").read_text())
    recorded = json.loads((Path(best["run_dir"]) / "config.json").read_text())
    values = _toml(sweep_dir / "best.toml")
    assert values["data"] == str(tree) and Path(values["data"]).is_absolute()
    decided = json.loads((sweep_dir / "sweep.json").read_text())["precision"]
    # The trial was told the sweep's precision (its request is not "auto"), and best.toml carries it.
    assert recorded["precision"] == values["precision"] == decided
    assert values["lr"] == recorded["lr"] and values["mean"] == recorded["mean"] and values["std"] == recorded["std"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["train", "--config", str(sweep_dir / "best.toml"), "--run-dir", "again", "--progress", "off"]) == 0
    trial_history = json.loads((Path(best["run_dir"]) / "history.json").read_text())
    again = json.loads((elsewhere / "again" / "history.json").read_text())
    assert trial_history["val_acc_epoch"] and {k: again[k] for k in trial_history} == trial_history
    assert again["test_acc"] == pytest.approx(best["test_acc"])


def test_a_study_continued_on_other_data_is_refused_and_a_moved_copy_is_taken(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import shutil

    from conftest import make_tree

    sweep_dir, space = tmp_path / "sweep", write_space(tmp_path)
    assert main(sweep_args(tmp_path / "tre", space, sweep_dir, 1)) == 2  # a mistyped --data: one line
    assert not sweep_dir.exists()  # and nothing made that could remember it
    assert main(sweep_args(tree, space, sweep_dir, 1, "--pruner", "none")) == 0
    other = make_tree(tmp_path / "other", seed=1)
    capsys.readouterr()
    assert main(sweep_args(other, space, sweep_dir, 2)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ran its trials on other data" in err, err
    assert len(_journal(sweep_dir).trials) == 1  # no trial ran on the other data
    moved = tmp_path / "moved"
    shutil.copytree(tree, moved)  # the same images elsewhere: the same data
    assert main(sweep_args(moved, space, sweep_dir, 2, "--pruner", "none")) == 0
    assert _toml(sweep_dir / "best.toml")["data"] == str(moved)
    assert json.loads((sweep_dir / "best.json").read_text())["data"] == str(moved)


def test_a_new_best_sees_the_test_split_a_second_time_said_plainly_and_both_records_are_kept(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import shutil

    from optuna.trial import create_trial

    sweep_dir = tmp_path / "sweep"
    assert main(sweep_args(tree, write_space(tmp_path), sweep_dir, 1, "--pruner", "none")) == 0
    first = json.loads((sweep_dir / "best.json").read_text())["test_evaluations"]
    assert [r["trial"] for r in first] == [0]
    # A better trial joins the study (another machine's, say): its run is a copy of trial 0's.
    study = _journal(sweep_dir)
    shutil.copytree(sweep_dir / "trial-0000", sweep_dir / "trial-0001")
    old = study.trials[0]
    better = create_trial(
        value=old.value + 1,
        params=old.params,
        distributions=old.distributions,
        user_attrs={**old.user_attrs, "run_dir": str(sweep_dir / "trial-0001")},
    )
    study.add_trial(better)
    capsys.readouterr()
    assert main(["sweep", "--report", "--sweep-dir", str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    assert "seen a second time" in out and "trial 0" in out
    records = json.loads((sweep_dir / "best.json").read_text())["test_evaluations"]
    assert [r["trial"] for r in records] == [0, 1] and records[0] == first[0]  # the first one untouched
    keys = [k for k in _journal(sweep_dir).user_attrs if k.startswith("test_evaluation")]
    assert len(keys) == 2
    assert main(["sweep", "--report", "--sweep-dir", str(sweep_dir)]) == 0  # nothing evaluated a third time
    assert len(json.loads((sweep_dir / "best.json").read_text())["test_evaluations"]) == 2


def test_a_sweep_folder_holding_another_studys_trials_is_refused(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    sweep_dir, space = tmp_path / "sweep", write_space(tmp_path)
    assert main(sweep_args(tree, space, sweep_dir, 1, "--pruner", "none")) == 0
    before = (sweep_dir / "trial-0000" / "config.json").read_bytes()
    capsys.readouterr()
    other = ["--storage", f"sqlite:///{tmp_path / 'other.db'}"]  # the same study name, another storage
    assert main(sweep_args(tree, space, sweep_dir, 1, *other)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds the trials of 'sweep'" in err, err
    assert (sweep_dir / "trial-0000" / "config.json").read_bytes() == before


def test_continuing_with_the_same_seed_proposes_new_parameters(tree: Path, tmp_path: Path) -> None:
    sweep_dir, space = tmp_path / "sweep", write_space(tmp_path, epochs=1)
    assert main(sweep_args(tree, space, sweep_dir, 2, "--pruner", "none")) == 0
    assert main(sweep_args(tree, space, sweep_dir, 4, "--pruner", "none")) == 0
    lrs = [t.params["lr"] for t in _journal(sweep_dir).trials]
    assert len(lrs) == 4 and len(set(lrs)) == 4, lrs


def test_enqueued_trials_run_first_as_written_and_once_in_the_studys_life(tree: Path, tmp_path: Path) -> None:
    text = write_space(tmp_path, epochs=1).read_text()
    text += "\n[search.label-smoothing]\nchoices = [0.0, 0.2]\n"
    text += "\n[[enqueue]]\nlr = 0.05\nlabel-smoothing = 0\n\n[[enqueue]]\nlr = 0.15\n"
    space = write_space(tmp_path, text=text)
    sweep_dir = tmp_path / "sweep"
    assert main(sweep_args(tree, space, sweep_dir, 3, "--pruner", "none")) == 0
    trials = _journal(sweep_dir).trials
    assert trials[0].params == {"lr": 0.05, "label_smoothing": 0.0}  # the choice 0.0 that 0 names
    assert trials[1].params["lr"] == 0.15 and trials[1].params["label_smoothing"] in (0.0, 0.2)  # sampled
    assert trials[2].params["lr"] not in (0.05, 0.15)
    config = json.loads((Path(trials[0].user_attrs["run_dir"]) / "config.json").read_text())
    assert (config["lr"], config["label_smoothing"]) == (0.05, 0.0)  # what the run trained with
    # Continued, the study holds the points already: it samples the new trial, queuing none again.
    assert main(sweep_args(tree, space, sweep_dir, 4, "--pruner", "none")) == 0
    lrs = [t.params["lr"] for t in _journal(sweep_dir).trials]
    assert len(lrs) == 4 and lrs.count(0.05) == 1 and lrs.count(0.15) == 1, lrs


def _full_length_script():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "full_length_space.py"
    spec = importlib.util.spec_from_file_location("full_length_space", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_full_length_space_reruns_the_best_trials_and_a_preset_longer(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    short = tmp_path / "short"
    space = write_space(tmp_path, epochs=1, low=0.001)
    assert main(sweep_args(tree, space, short, 3, "--pruner", "none")) == 0
    ranked = sorted(_journal(short).get_trials(states=(TrialState.COMPLETE,)), key=lambda t: -t.value)
    script = _full_length_script()
    out = tmp_path / "full.toml"
    assert script.main([str(short), "--top", "2", "--epochs", "2", "--recipe", "tutorial", "--out", str(out)]) == 0
    full = tmp_path / "full"
    assert main(sweep_args(tree, out, full, 3, "--pruner", "none")) == 0
    trials = _journal(full).trials
    assert [t.params for t in trials] == [ranked[0].params, ranked[1].params, {"lr": TrainConfig().lr}]
    assert all(len(t.intermediate_values) == 2 for t in trials)  # at the new length
    assert script.main([str(short), "--epochs", "2", "--out", str(out)]) == 2  # never overwrites
    assert script.main([str(tmp_path / "none"), "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "already there" in err and "no such folder" in err and "Traceback" not in err


def test_report_keeps_the_settings_the_sweep_ran_with(tree: Path, tmp_path: Path) -> None:
    sweep_dir, space = tmp_path / "sweep", write_space(tmp_path, epochs=1)
    # Settings other than the report's own defaults (pruner median, no seed), so a report that
    # wrote its own over them would show.
    assert main(sweep_args(tree, space, sweep_dir, 2, "--pruner", "none", "--seed", "7")) == 0
    ran = json.loads((sweep_dir / "best.json").read_text())["settings"]
    assert (ran["pruner"], ran["seed"]) == ("none", 7)
    assert main(["sweep", "--report", "--sweep-dir", str(sweep_dir)]) == 0
    assert json.loads((sweep_dir / "best.json").read_text())["settings"] == ran


def test_the_precision_is_decided_once_from_the_space_or_the_rule() -> None:
    from ignite_mlp.sweep.space import parse_space
    from ignite_mlp.sweep.study import decide_precision

    searched = parse_space({"search": {"precision": {"choices": ["fp32", "bf16"]}}})
    fixed = parse_space({"fixed": {"precision": "fp32"}, "search": {"lr": {"low": 0.01, "high": 0.1}}})
    free = parse_space({"search": {"lr": {"low": 0.01, "high": 0.1}}})
    assert decide_precision(searched, "cpu")[0] is None  # each trial asks for its own
    assert decide_precision(fixed, "cpu")[0] == "fp32"
    assert decide_precision(free, "cpu")[0] in ("fp32", "bf16")
    assert decide_precision(free, "cpu") == decide_precision(free, "cpu")  # a rule, not a measurement


# ----------------------------------------------------------------------------- locks and dead workers


_HOLD = (
    "import sys, time; from pathlib import Path; from ignite_mlp.sweep.locks import TrialLock\n"
    "lock = TrialLock(); lock.acquire(Path(sys.argv[1])); print('held', flush=True); time.sleep(600)\n"
)


def _holder(path: Path) -> subprocess.Popen:
    """A child process holding ``path``'s lock (as a worker holds its trial's)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = subprocess.Popen([sys.executable, "-c", _HOLD, str(path)], env=env, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


def test_trial_lock_is_held_until_released_or_its_process_dies(tmp_path: Path) -> None:
    from ignite_mlp.sweep.locks import TrialLock, lock_is_free

    path = tmp_path / ".locks" / "trial-0000.lock"
    assert lock_is_free(path)  # no file: nobody holds it
    lock = TrialLock()
    lock.acquire(path)
    assert lock.held and not lock_is_free(path)
    assert not TrialLock().acquire(path, blocking=False)  # a second holder is refused
    lock.release()
    assert lock_is_free(path)
    child = _holder(path)
    try:
        assert not lock_is_free(path)
    finally:
        child.kill()  # kill -9: the kernel drops the lock
        child.wait()
    assert lock_is_free(path) and TrialLock().acquire(path, blocking=False)


def test_trial_lock_never_follows_a_link(tmp_path: Path) -> None:
    from ignite_mlp.errors import UserError
    from ignite_mlp.sweep.locks import TrialLock

    outside = tmp_path / "outside"
    (tmp_path / ".locks").mkdir()
    (tmp_path / ".locks" / "trial-0000.lock").symlink_to(outside)
    with pytest.raises(UserError, match="symbolic link"):
        TrialLock().acquire(tmp_path / ".locks" / "trial-0000.lock")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / ".locks").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UserError, match="symbolic link"):
        TrialLock().acquire(tmp_path / "sweep" / ".locks" / "trial-0000.lock")
    assert not outside.exists() and list((tmp_path / "elsewhere").iterdir()) == []


def test_refuse_surplus_steps_back_for_the_earlier_trials() -> None:
    from ignite_mlp.sweep.objective import SurplusTrial, refuse_surplus

    study = optuna.create_study(direction="maximize")
    for value in (1.0, 2.0, 3.0):
        study.add_trial(optuna.trial.create_trial(value=value))
    trial = study.ask()  # trial 3, after three finished ones
    refuse_surplus(trial, 4)  # room for it
    with pytest.raises(SurplusTrial):
        refuse_surplus(trial, 3)
    assert "already had its 3 trials" in study.trials[3].user_attrs["note"]


def _dead_trial(study: optuna.Study, host: str, run_dir: str | None) -> int:
    """A running trial as a worker leaves it when it dies (under ``host``, before or after its run folder)."""
    trial = study.ask({"lr": optuna.distributions.FloatDistribution(0.01, 0.2, log=True)})
    trial.set_user_attr("host", host)
    if run_dir is not None:
        trial.set_user_attr("run_dir", run_dir)
    return trial.number


def test_dead_journal_workers_are_recognised_whatever_their_host(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    sweep_dir, space = tmp_path / "sweep", write_space(tmp_path, epochs=1)
    assert main(sweep_args(tree, space, sweep_dir, 1, "--pruner", "none")) == 0
    study = _journal(sweep_dir)
    renamed = _dead_trial(study, "container-before-restart", str(sweep_dir / "trial-0001"))
    early = _dead_trial(study, "container-before-restart", None)  # died before recording its run folder
    capsys.readouterr()
    assert main(sweep_args(tree, space, sweep_dir, 3, "--pruner", "none")) == 0
    out = capsys.readouterr().out
    trials = _journal(sweep_dir).trials
    assert trials[renamed].state == trials[early].state == TrialState.FAIL
    assert f"trial {renamed}: its worker died" in out and f"trial {early}: its worker died" in out
    reruns = {t.system_attrs.get("failed_trial") for t in trials if t.state == TrialState.COMPLETE}
    assert {renamed, early} <= reruns  # each dead trial run again, with its parameters
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3


def test_a_worker_waiting_on_a_live_trial_says_what_it_waits_for(tree: Path, tmp_path: Path) -> None:
    from ignite_mlp.sweep.locks import lock_path

    sweep_dir, space = tmp_path / "sweep", write_space(tmp_path, epochs=1)
    assert main(sweep_args(tree, space, sweep_dir, 1, "--pruner", "none")) == 0
    number = _dead_trial(_journal(sweep_dir), "another-machine", str(sweep_dir / "trial-0001"))
    holder = _holder(lock_path(sweep_dir, number))  # its worker is alive
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PYTHONUNBUFFERED": "1"}
    args = sweep_args(tree, space, sweep_dir, 2, "--pruner", "none")
    sweep = subprocess.Popen([sys.executable, "-m", "ignite_mlp", *args], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert sweep.stdout is not None
        lines = []
        for line in sweep.stdout:  # the waiting line comes before anything is run
            lines.append(line)
            if "waiting for trials" in line:
                break
        assert f"waiting for trials {number} (another-machine" in lines[-1] and "lock files" in lines[-1]
        holder.kill()  # now it dies: its trial is run again here
        rest = sweep.communicate(timeout=120)[0]
        assert sweep.returncode == 0 and f"trial {number}: its worker died" in rest
    finally:
        for process in (holder, sweep):
            if process.poll() is None:
                process.kill()


# ----------------------------------------------------------------------------- optuna-dashboard


def _dashboard_reads(storage: str, name: str) -> dict:
    """optuna-dashboard's own server on ``storage`` (as its command line takes it): study ``name``'s detail."""
    import threading
    import urllib.request
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    optuna_dashboard = pytest.importorskip("optuna_dashboard", reason="the sweep extra: optuna-dashboard")

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = make_server("127.0.0.1", 0, optuna_dashboard.wsgi(storage), handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        studies = json.loads(urllib.request.urlopen(f"{base}/api/studies", timeout=30).read())["study_summaries"]
        (study_id,) = [s["study_id"] for s in studies if s["study_name"] == name]
        return json.loads(urllib.request.urlopen(f"{base}/api/studies/{study_id}", timeout=30).read())
    finally:
        server.shutdown()


def _same_trials(detail: dict, ours: list) -> None:
    """What the dashboard shows is what Optuna's own API reads: values and parameters, trial by trial."""
    shown = [t for t in detail["trials"] if t["state"] in ("Complete", "Pruned")]
    mine = [t for t in ours if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert [t["number"] for t in shown] == [t.number for t in mine] and mine
    assert [t["values"] for t in shown if t["state"] == "Complete"] == [
        [t.value] for t in mine if t.state == TrialState.COMPLETE
    ]
    assert [{p["name"]: float(p["param_external_value"]) for p in t["params"]} for t in shown] == [
        t.params for t in mine
    ]


def test_optuna_dashboard_reads_a_sweeps_journal(tree: Path, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    assert main(sweep_args(tree, write_space(tmp_path, epochs=1), sweep_dir, 2, "--pruner", "none")) == 0
    _same_trials(_dashboard_reads(str(sweep_dir / "journal.log"), "sweep"), _journal(sweep_dir).trials)


def test_on_a_terminal_the_status_line_is_redrawn_between_trial_lines(tree: Path, tmp_path: Path) -> None:
    """The real command with its output on a pseudo-terminal: the status line is drawn in place."""
    import pty

    args = sweep_args(tree, write_space(tmp_path, epochs=2), tmp_path / "sweep", 2, "--pruner", "none")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    leader, follower = pty.openpty()
    sweep = subprocess.Popen(
        [sys.executable, "-m", "ignite_mlp", *args], env=env, stdout=follower, stderr=subprocess.DEVNULL
    )
    os.close(follower)
    shown = b""
    try:
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal's other end closed: the command ended
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
        sweep.wait(timeout=120)
    text = shown.decode(errors="replace")
    assert sweep.returncode == 0, text
    assert "\r\x1b[K" in text and " trials finished | " in text  # drawn, then cleared for a trial's line
    assert "trial 0: " in text and "trial 1: " in text
