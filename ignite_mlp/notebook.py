"""Where a run's output is shown: a Jupyter notebook, a terminal, or a file.

Ignite's ``ProgressBar`` and ``tqdm.auto`` already draw a widget inside a Jupyter kernel (with
``ipywidgets`` installed: the ``notebook`` extra). A kernel's stderr is no terminal, though, so
a "bar only on a terminal" rule must also ask :func:`in_jupyter`, or a notebook loses its bar.
"""

from __future__ import annotations

import sys
from typing import TextIO


def in_jupyter() -> bool:
    """True inside a Jupyter kernel (JupyterLab, Notebook, VS Code), where progress bars are widgets.

    The same test ``tqdm.autonotebook`` makes: the kernel's shell is IPython's ZMQ shell.

    >>> in_jupyter()  # a doctest runs in no kernel
    False
    """
    if "ipykernel.zmqshell" not in sys.modules:  # cheap, and never imports IPython
        return False
    from IPython import get_ipython

    return type(get_ipython()).__name__ == "ZMQInteractiveShell"


def bar_fits(stream: TextIO | None = None) -> bool:
    """Whether a redrawn progress bar reads well on ``stream`` (default: ``sys.stderr``): it is a
    terminal, or this is a Jupyter kernel, where the bar is a widget. Not a file or a pipe, where
    each redraw would pile up as text.

    >>> import io
    >>> bar_fits(io.StringIO())
    False
    """
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) or in_jupyter()
