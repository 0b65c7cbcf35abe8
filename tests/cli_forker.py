"""Runs ``python -m ignite_mlp`` many times without paying for torch's import each time.

    python tests/cli_forker.py

imports what the CLI imports once, then reads one JSON request a line on stdin
(``{"argv": [...], "cwd": ..., "env": {...}, "path": [...], "stdout": FILE, "stderr": FILE}``),
forks a child for it that runs the ``ignite_mlp`` package as ``__main__`` (what ``-m`` does) with
its own working folder, environment and stdout/stderr files, and answers ``{"status": N}``: the
child's exit status. Each request is a process of its own, as a user's command is; only the
imports are shared. (Started fresh, a command spends about 3 s of CPU importing torch and Ignite:
most of a bad-input case.)
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def run_child(request: dict[str, Any]) -> None:
    """In the forked child: become the command the request describes, run it, exit with its status."""
    import runpy
    import tempfile
    import traceback

    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    tempfile.tempdir = None  # the parent may have fixed it before TMPDIR changed
    sys.path[:0] = request["path"]
    for name, fd in (("stdout", 1), ("stderr", 2)):
        target = os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    sys.argv = ["ignite_mlp", *request["argv"]]
    status = 0
    try:
        runpy.run_module("ignite_mlp", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, int | None):
            print(e.code, file=sys.stderr)
    except BaseException:  # what the interpreter would do with an uncaught exception
        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def serve() -> None:
    # What every command imports (torch and Ignite: the slow part), and what some import later,
    # each a second or less, paid once here instead of in every case: the JPEG decoder, Optuna
    # (sweep), matplotlib (plots), the ONNX exporter. Not onnxruntime: a case hides it to play a
    # machine without the export extra.
    import matplotlib  # noqa: F401
    import onnx  # noqa: F401
    import onnxscript  # noqa: F401
    import optuna  # noqa: F401
    import torchvision.io  # noqa: F401

    import ignite_mlp.cli  # noqa: F401
    import ignite_mlp.run.training  # noqa: F401

    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            run_child(request)
        _, wait_status = os.waitpid(pid, 0)
        print(json.dumps({"status": os.waitstatus_to_exitcode(wait_status)}), flush=True)


if __name__ == "__main__":
    serve()
