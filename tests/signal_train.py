"""Test helper: ``run_train.py`` that sends a real signal once a given step is done.

Usage: ``python tests/signal_train.py SIGNAL STEP WHO [run_train flags...]`` (also under
torchrun). SIGNAL is ``TERM`` or ``INT``; after the update that reaches STEP, WHO sends it:
``self`` (every rank, to itself), ``rank1`` (rank 1 only, to itself: the other rank must
agree), ``parent`` (rank 0, to its parent: torchrun then forwards it to every rank, as a
scheduler's SIGTERM reaches a job). Nothing in the library knows about this: the helper wraps
``Trainer.run_step``.
"""

from __future__ import annotations

import os
import signal
import sys

import torch


def main() -> int:
    torch.set_num_threads(1)
    signum = getattr(signal, f"SIG{sys.argv[1]}")
    step, who = int(sys.argv[2]), sys.argv[3]
    from diffuseq.runtime import dist
    from diffuseq.training.trainer import Trainer

    real_run_step = Trainer.run_step

    def run_step(self, batch):
        real_run_step(self, batch)
        if self.step != step:
            return
        if who == "self" or (who == "rank1" and dist.rank() == 1):
            os.kill(os.getpid(), signum)
        elif who == "parent" and dist.rank() == 0:
            os.kill(os.getppid(), signum)

    Trainer.run_step = run_step
    from diffuseq.cli.train import main as train_main

    return train_main(sys.argv[4:])


if __name__ == "__main__":
    raise SystemExit(main())
