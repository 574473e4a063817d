"""What every command-line entry point shares: user errors become one-paragraph messages."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Sequence

from diffuseq.errors import UserError


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None, prog: str) -> int:
    """Run ``main(argv)``; a :class:`UserError` prints ``prog: error: <message>`` and returns 2."""
    try:
        code = main(argv)
    except UserError as err:
        message = " ".join(str(err).split())
        print(textwrap.fill(
                f"{prog}: error: {message}", width=100, break_long_words=False, break_on_hyphens=False
            ), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)
