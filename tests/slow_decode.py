"""Test helper: ``run_decode.py`` that stalls at a chosen moment of writing its outputs.

Usage: ``python tests/slow_decode.py MODE [run_decode flags...]`` with MODE ``write`` (half of
the second output file is in its temporary file) or ``rename`` (the first output file has been
renamed into place, the others not yet). Prints ``STALLING`` and sleeps, so that a test can
SIGKILL the process there. Nothing in the library knows about this: the helper wraps
``open``-level writes and ``os.replace`` of the decode manifest module.
"""

from __future__ import annotations

import os
import sys
import time

import torch


def _stall() -> None:
    print("STALLING", flush=True)
    time.sleep(600)
    raise AssertionError("the test should have killed this process")


def main() -> int:
    torch.set_num_threads(1)
    mode = sys.argv[1]
    from diffuseq.decoding import manifest as decode_manifest

    if mode == "write":
        real_write, calls = decode_manifest._write, []

        def slow_write(tmp, lines, old):
            calls.append(tmp)
            if len(calls) < 2:
                return real_write(tmp, lines, old)
            with open(tmp, "wb") as handle:
                handle.write("".join(line + "\n" for line in lines[: len(lines) // 2]).encode())
                handle.flush()
            _stall()

        decode_manifest._write = slow_write
    elif mode == "rename":
        real_replace = os.replace

        def slow_replace(src, dst):
            real_replace(src, dst)
            if str(dst).endswith(".json"):
                _stall()

        decode_manifest.os.replace = slow_replace
    else:
        raise SystemExit(f"unknown mode {mode}")
    from diffuseq.cli.decode import main as decode_main

    return decode_main(sys.argv[2:])


if __name__ == "__main__":
    raise SystemExit(main())
