"""Test helper: ``run_train.py`` whose checkpoint writer stalls half-way through one state file.

Usage: ``python tests/slow_save_train.py STEP [run_train flags...]``. When the temp file of
``state_{STEP:06d}.pt`` is half written (and flushed), prints ``STALLING <path>`` and sleeps, so
that a test can SIGKILL the process in the middle of writing a checkpoint. Nothing in the
library knows about this: the helper wraps ``torch.save``.
"""

from __future__ import annotations

import io
import os
import sys
import time

import torch


def main() -> int:
    torch.set_num_threads(1)
    stall_prefix = f"state_{int(sys.argv[1]):06d}.pt."  # temp files are <name>.<pid>.tmp
    real_save = torch.save

    def slow_save(obj, f, *args, **kwargs):
        name = os.path.basename(str(getattr(f, "name", "")))
        if not (name.startswith(stall_prefix) and name.endswith(".tmp")):
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        print("STALLING", name, flush=True)
        time.sleep(600)
        raise AssertionError("the test should have killed this process")

    torch.save = slow_save
    from diffuseq.cli.train import main as train_main

    return train_main(sys.argv[2:])


if __name__ == "__main__":
    raise SystemExit(main())
