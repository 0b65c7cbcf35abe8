"""What a sweep shows while it runs: one line per finished trial, and between them the state
of the study (trials finished of N, the running trials with their epoch, the best so far and
an estimate of the time left). On a terminal that state is one status line redrawn in place;
in a file or a pipe it is a plain line, written only when it changed and at most every
:data:`FILE_EVERY` seconds, so a log reads top to bottom without redraws.

Everything shown is read from the study (Optuna's storage), so it is the same with one worker
or many, and on every machine that shares the study.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import IO

import optuna
from optuna.trial import FrozenTrial, TrialState

from ignite_mlp.sweep.objective import FINISHED

POLL_SECONDS = 1.0
FILE_EVERY = 30.0


def trial_line(study_trials: list[FrozenTrial], trial: FrozenTrial, total: int, jobs: int) -> str:
    """The line printed when ``trial`` finishes (``study_trials``: the study's trials then)."""
    # The trials finished by then (a look at the study may come after several finished).
    end = trial.datetime_complete
    finished = [t for t in study_trials if t.state in FINISHED and (end is None or t.datetime_complete <= end)]
    left = max(0, total - len(finished))
    epochs = len(trial.intermediate_values)
    value = f"{trial.value:.2f}%" if trial.value is not None else "-"
    if trial.state == TrialState.PRUNED:
        value = f"pruned at epoch {epochs} ({value})"
    eta = time_left(finished, left, jobs)
    return f"trial {trial.number}: {value} | {best_text(finished)} | {left} of {total} trials to go{eta}"


def best_text(finished: list[FrozenTrial]) -> str:
    complete = [t for t in finished if t.state == TrialState.COMPLETE and t.value is not None]
    best = max(complete, key=lambda t: (t.value, -t.number), default=None)
    return f"best {best.value:.2f}% (trial {best.number})" if best is not None else "best -"


def time_left(finished: list[FrozenTrial], left: int, jobs: int) -> str:
    """ ", about 5 min left": the mean duration of the finished trials, times the trials left, over the workers."""
    durations = [
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in finished
        if t.datetime_start and t.datetime_complete
    ]
    if not left or not durations:
        return ""
    return f", about {duration(sum(durations) / len(durations) * left / jobs)} left"


def duration(seconds: float) -> str:
    """
    >>> duration(42), duration(300), duration(7200)
    ('42 s', '5 min', '2.0 h')
    """
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def status_text(trials: list[FrozenTrial], total: int, jobs: int, epochs: int | None) -> str:
    """The study's state in one line.

    >>> status_text([], 10, 1, 5)
    '0 of 10 trials finished | none running | best -'
    """
    finished = [t for t in trials if t.state in FINISHED]
    running = [t for t in trials if t.state == TrialState.RUNNING]
    of = f"/{epochs}" if epochs else ""
    now = ", ".join(f"trial {t.number} epoch {len(t.intermediate_values)}{of}" for t in running) or "none running"
    left = max(0, total - len(finished))
    return (
        f"{len(finished)} of {total} trials finished | {now} | {best_text(finished)}{time_left(finished, left, jobs)}"
    )


class Display:
    """Trial lines and the status line on one stream; thread-safe (the monitor is a thread)."""

    def __init__(self, stream: IO[str] | None = None, write: Callable[[str], None] | None = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = write is None and self.stream.isatty()
        self._write = write
        self._lock = threading.Lock()
        self._status = ""
        self._status_at = float("-inf")

    def line(self, text: str) -> None:
        with self._lock:
            if self._write is not None:
                self._write(text)
                return
            clear = "\r\033[K" if self.tty and self._status else ""
            self.stream.write(f"{clear}{text}\n{self._status if self.tty else ''}")
            self.stream.flush()

    def status(self, text: str) -> None:
        with self._lock:
            if text == self._status:
                return
            if self.tty:
                self.stream.write(f"\r\033[K{text}")
                self.stream.flush()
            elif time.monotonic() - self._status_at >= FILE_EVERY:
                (self._write or self._plain)(text)
                self._status_at = time.monotonic()
            else:
                return
            self._status = text

    def _plain(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        with self._lock:
            if self.tty and self._status:
                self.stream.write("\r\033[K")
                self.stream.flush()
            self._status = ""


class Monitor:
    """Reads the study every :data:`POLL_SECONDS`: a line for each trial finished since the last
    look, then the status. Run in a thread (:meth:`start`/:meth:`stop`) or polled (:meth:`poll`)."""

    def __init__(self, study: optuna.Study, total: int, jobs: int, epochs: int | None, display: Display) -> None:
        self.study, self.total, self.jobs, self.epochs, self.display = study, total, jobs, epochs, display
        self.seen = {t.number for t in study.get_trials(deepcopy=False, states=FINISHED)}
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> None:
        trials = self.study.get_trials(deepcopy=False)
        new = [t for t in trials if t.state in FINISHED and t.number not in self.seen]
        for t in sorted(new, key=lambda t: (t.datetime_complete or t.datetime_start, t.number)):  # in finishing order
            self.seen.add(t.number)
            self.display.line(trial_line(trials, t, self.total, self.jobs))
        self.display.status(status_text(trials, self.total, self.jobs, self.epochs))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sweep-monitor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(POLL_SECONDS):
            try:
                self.poll()
            except Exception:  # a read racing a write: the next look sees it
                continue

    def stop(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.poll()  # the trials that finished since the last look
        finally:
            self.display.close()
