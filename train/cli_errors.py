"""Which failures of a `chimera` command are the user's to fix, and how they are shown.

A missing file, a value out of range or a checkpoint that is not ours is reported as one line,
`chimera <command>: <cause>`, exit status 2 (argparse's status for bad usage), because a
traceback into model code hides the one thing the user must change. Anything else is a bug
and keeps its traceback. `--debug` (anywhere in the arguments) or `CHIMERA_DEBUG=1` shows the
traceback of user errors too.
"""

from __future__ import annotations

import os
import sys

import yaml

# ValueError covers our own checks, CheckpointError (models/safe_load.py), JSON decode and
# unicode errors; the OSError subclasses are the ones a path given by the user causes.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError,
    yaml.YAMLError,
)
EXIT_STATUS = 2


def user_errors() -> tuple[type[BaseException], ...]:
    """USER_ERRORS, plus Lightning's misconfiguration error once Lightning is loaded (only then
    can it be raised; `chimera data` and `--help` need not import Lightning to start)."""
    lightning = sys.modules.get("lightning.fabric.utilities.exceptions")
    return USER_ERRORS + ((lightning.MisconfigurationException,) if lightning else ())


def split_debug(argv: list[str]) -> tuple[list[str], bool]:
    """`argv` without `--debug`, and whether tracebacks were asked for (flag or CHIMERA_DEBUG=1)."""
    rest = [a for a in argv if a != "--debug"]
    return rest, len(rest) != len(argv) or os.environ.get("CHIMERA_DEBUG", "") not in ("", "0")


def one_line(command: str, err: BaseException) -> str:
    """`chimera <command>: <cause>`, the message's lines joined (a FileNotFoundError from `open`
    carries its path in `filename`, not always in its text). jsonargparse re-raises an error of a
    constructor inside a dump of the whole config; the constructor's own error is shown instead."""
    while _raised_in_jsonargparse(err) and isinstance(err.__cause__ or err.__context__, user_errors()):
        err = err.__cause__ or err.__context__
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, OSError) and err.filename and err.strerror and text.startswith("[Errno"):
        text = f"{err.strerror.lower()}: {err.filename}"  # as `open` raises it: "[Errno 2] ..."
    return f"chimera {command}: {text}"


def _raised_in_jsonargparse(err: BaseException) -> bool:
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and "jsonargparse" in tb.tb_frame.f_code.co_filename
