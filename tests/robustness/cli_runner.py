"""Run ``python -m segfpn.cli ARGS...`` many times without paying its imports every time.

    echo '[["predict", "a.jpg", "--out", "o"], ...]' | python tests/robustness/cli_runner.py OUT_DIR

This Python imports what ``segfpn.cli`` needs (torch, segfpn: about 7 s on two busy cores)
and runs no torch code itself. Then, for each argument list, it forks: the child is a process
of its own that runs the module ``segfpn.cli`` as ``__main__`` with that ``sys.argv``, exactly
what ``python -m segfpn.cli`` does (``runpy``), its stdout and stderr going to
``OUT_DIR/<i>.stdout`` and ``OUT_DIR/<i>.stderr``. A crash, a signal or a hang ends only the
child. One JSON line per run comes out: ``{"argv", "returncode", "stdout", "stderr", "seconds"}``;
returncode is negative for a signal, None for a run killed after ``TIMEOUT_S``.
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import sys
import time
from pathlib import Path

TIMEOUT_S = 180.0

# What `python -m segfpn.cli predict` imports before it runs (not segfpn.cli itself: runpy
# executes it fresh as __main__, as `python -m` does).
import segfpn  # noqa: E402,F401
import segfpn.checkpoints.weights_cli  # noqa: E402,F401
import segfpn.evaluation.evaluate  # noqa: E402,F401
import segfpn.inference  # noqa: E402,F401
import segfpn.viz  # noqa: E402,F401


def _child(argv: list[str], stdout: Path, stderr: Path) -> None:
    for fd, path in ((1, stdout), (2, stderr)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    sys.argv = [str(Path(sys.modules["segfpn"].__file__).with_name("cli.py")), *argv]
    code = 0
    try:
        runpy.run_module("segfpn.cli", run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        if isinstance(exit_.code, int):
            code = exit_.code
        elif exit_.code is not None:
            print(exit_.code, file=sys.stderr)
            code = 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run(argv: list[str], out_dir: Path, index: int) -> dict:
    stdout, stderr = out_dir / f"{index}.stdout", out_dir / f"{index}.stderr"
    start = time.monotonic()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _child(argv, stdout, stderr)
    returncode = None
    while time.monotonic() - start < TIMEOUT_S:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            returncode = os.waitstatus_to_exitcode(status)
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    return {"argv": argv, "returncode": returncode, "stdout": stdout.read_text(errors="replace"),
            "stderr": stderr.read_text(errors="replace"), "seconds": time.monotonic() - start}


def main() -> None:
    out_dir = Path(sys.argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    for index, argv in enumerate(json.load(sys.stdin)):
        print(json.dumps(run(argv, out_dir, index)), flush=True)


if __name__ == "__main__":
    main()
