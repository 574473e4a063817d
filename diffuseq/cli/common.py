"""What every command-line entry point shares: its name, and user errors as one paragraph."""

from __future__ import annotations

import errno
import os
import sys
import textwrap
from collections.abc import Callable, Sequence

from diffuseq.errors import UserError

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # what run_cli reports in one line, not a traceback


def program_name(script: str, module: str, console_script: str) -> str:
    """The name this process was started by, for usage lines and messages.

    ``diffuseq-train ...`` (a console script) gives ``diffuseq-train``; ``python -m
    diffuseq.cli.train`` gives that; otherwise (``python run_train.py``, or a call from Python)
    ``script``.
    """
    launched = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if launched == console_script:
        return console_script
    if launched == module.rsplit(".", 1)[-1] + ".py" and f"{os.sep}cli{os.sep}" in sys.argv[0]:
        return f"python -m {module}"
    return script


def describe(doc: str | None, script: str, prog: str) -> str:
    """The module docstring as ``--help`` text: its ``python <script>`` examples written with the
    name the program was started by (``diffuseq-eval --folder ...`` for the console script)."""
    doc = doc or ""
    return doc if prog == script else doc.replace(f"python {script}", prog)


def run_cli(
    main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None, prog: str
) -> int:
    """Run ``main(argv)``; a :class:`UserError` prints ``prog: error: <message>`` and returns 2;
    Ctrl-C returns 130 (a stopped training run: its message and ``exit_code``, e.g. 143)."""
    try:
        code = main(argv)
    except UserError as err:
        message = " ".join(str(err).split())
        print(
            textwrap.fill(
                f"{prog}: error: {message}",
                width=100,
                break_long_words=False,
                break_on_hyphens=False,
            ),
            file=sys.stderr,
        )
        return 2
    except OSError as err:
        if err.errno not in _DISK_FULL:
            raise
        where = f" ({err.filename})" if err.filename else ""
        print(
            f"{prog}: error: {err.strerror}{where}; free space on that disk and run again",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt as err:  # a training run's says what it saved and its status
        if not getattr(err, "quiet", False):  # rank 0 speaks for all ranks
            print(f"{prog}: {err or 'interrupted'}", file=sys.stderr)
        return int(getattr(err, "exit_code", 130))
    return int(code or 0)
