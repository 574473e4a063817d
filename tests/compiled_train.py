"""``run_train.py`` with Inductor's ``fallback_random`` (compiled random ops draw the numbers
eager ones draw), so that a compiled run can be compared with an eager one; for
tests/test_compile.py's two-process run."""

from __future__ import annotations

import sys

import torch._inductor.config

from diffuseq.cli.train import main

if __name__ == "__main__":
    torch._inductor.config.fallback_random = True
    sys.exit(main())
