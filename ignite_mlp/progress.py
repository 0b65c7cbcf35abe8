"""How a run shows progress: a redrawn bar on a terminal, a few plain lines anywhere else.

``--progress auto`` (the default) draws Ignite's bar only when stderr is a terminal (or in a
Jupyter notebook, where the bar is a widget). Written to
a file (nohup, CI, a scheduler), every redraw of a bar would land in the log as a carriage-return
line, so there the run prints its one-line epoch summaries only, and long steps (decoding a data
set) report every :data:`LINE_SECONDS` seconds and once at the end.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

from ignite_mlp.config.choices import PROGRESS_MODES
from ignite_mlp.notebook import bar_fits

__all__ = ["PROGRESS_MODES", "Progress", "progress_mode", "silent"]

LINE_SECONDS = 10.0


def silent(line: str) -> None:
    """A ``write`` that prints nothing: for ranks other than 0 (rank 0 speaks for the run) and for a
    sweep's trials (the sweep prints one line per finished trial)."""


def progress_mode(setting: str | bool, stream: IO[str] | None = None) -> str:
    """``bar``, ``lines`` or ``off`` for a ``--progress`` setting, given where it is written.

    >>> import io
    >>> progress_mode("auto", io.StringIO()), progress_mode("on", io.StringIO()), progress_mode(False)
    ('lines', 'bar', 'off')
    """
    if setting is True or setting == "on":
        return "bar"
    if setting is False or setting == "off":
        return "off"
    # A terminal, or a Jupyter kernel (whose stderr is no terminal, but where the bar is a widget).
    return "bar" if bar_fits(stream) else "lines"


class Progress:
    """Count work done as a tqdm bar (mode ``bar``), a line every ``seconds`` (``lines``), or
    not at all (``off``). :meth:`close` ends it with a closing line (bar and lines modes).

    >>> import io
    >>> out = io.StringIO()
    >>> p = Progress("decoding", "lines", stream=out, seconds=0.0)
    >>> p.update(5); p.close("decoded 5")
    >>> out.getvalue()
    'decoding: 5 done\\ndecoded 5\\n'
    """

    def __init__(
        self,
        desc: str,
        mode: str | bool,
        unit: str = "it",
        stream: IO[str] | None = None,
        seconds: float = LINE_SECONDS,
    ) -> None:
        self.mode = {True: "bar", False: "off"}.get(mode, mode) if isinstance(mode, bool) else mode
        self.desc, self.seconds = desc, seconds
        self.stream = sys.stderr if stream is None else stream
        self.done = 0
        self._last = time.monotonic()
        self._bar: Any = None
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(desc=desc, unit=unit, file=self.stream, leave=False)

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "lines" and time.monotonic() - self._last >= self.seconds:
            self._last = time.monotonic()
            print(f"{self.desc}: {self.done} done", file=self.stream, flush=True)

    def close(self, line: str = "") -> None:
        if self._bar is not None:
            self._bar.close()
        if line and self.mode != "off":
            print(line, file=self.stream, flush=True)
