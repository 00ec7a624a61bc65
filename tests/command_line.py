"""The ``pixclust`` command as tests run it: in this process by default, in a new one where the process is the point.

:func:`pixclust` calls the installed command's own entry point (``pixclust.cli.main``)
with its arguments, environment and working folder, and returns what a process
would: the exit code and the text written to stdout and stderr, a library bug
included as its traceback. Starting an interpreter per call costs about five
seconds of imports (torch, ONNX Runtime, scikit-learn) on the 2-core machine, more
than most commands take on a test's few images, so the suite runs them here.

:func:`pixclust_process` starts ``python -m pixclust`` for the tests whose subject
is the process: a second writer, a kill, a resource limit, the bytes a terminal
receives, or what an interpreter imports.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import traceback
from collections.abc import Iterator, Mapping
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any
from unittest import mock

# Wide enough that no path or message a test reads is wrapped by Rich.
COLUMNS = "200"


def pixclust(
    *args: object, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``pixclust ARGS`` in this process, with ``env`` added to the environment and ``cwd`` as working folder."""
    from pixclust.cli import main

    argv = ["pixclust", *map(str, args)]
    out, err = io.StringIO(), io.StringIO()
    with (
        mock.patch.dict(os.environ, {"COLUMNS": COLUMNS, **(env or {})}),
        _working_folder(cwd),
        mock.patch.object(sys, "argv", argv),
        redirect_stdout(out),
        redirect_stderr(err),
    ):
        try:
            main()
            code = 0
        except SystemExit as exited:
            code = _exit_status(exited.code, err)
        except Exception:
            # An uncaught error is a bug the test should show, as the interpreter would print it.
            err.write(traceback.format_exc())
            code = 1
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def pixclust_process(
    *args: object, env: Mapping[str, str] | None = None, timeout: float = 600, **popen: Any
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m pixclust ARGS`` as its own process; ``popen`` goes to :func:`subprocess.run`."""
    popen.setdefault("text", popen.get("encoding") is None)
    return subprocess.run(
        [sys.executable, "-m", "pixclust", *map(str, args)],
        capture_output=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": COLUMNS, **(env or {})},
        check=False,
        **popen,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> None:
    """The command failed with ``code`` and one ``error:`` line holding every fragment, not a traceback."""
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for fragment in fragments:
        assert fragment in " ".join(result.stderr.split()), result.stderr


def _exit_status(code: object, err: io.StringIO) -> int:
    # sys.exit("message") prints the message and exits 1, as the interpreter does.
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    err.write(f"{code}\n")
    return 1


@contextlib.contextmanager
def _working_folder(cwd: Path | None) -> Iterator[None]:
    if cwd is None:
        yield
        return
    before = Path.cwd()
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(before)
