"""Test helper, run under torchrun: train through ``diffuseq.cli.train.prepare`` and record
what this rank saw and ended with, in ``OUT_DIR/rank{r}.pt``.

Usage: ``torchrun --nproc_per_node 2 tests/dist_probe.py OUT_DIR [run_train flags...]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch


class _Recorder:
    """Wraps the training batches; remembers every example (its token ids) in order."""

    def __init__(self, batches):
        self.batches = batches
        self.rows: list[list[int]] = []

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.batches)
        self.rows += batch["input_ids"].tolist()
        return batch

    def state_dict(self):
        return self.batches.state_dict()

    def load_state_dict(self, state):
        self.batches.load_state_dict(state)


def main() -> int:
    torch.set_num_threads(1)
    from diffuseq.cli.train import prepare
    from diffuseq.runtime import dist

    out = Path(sys.argv[1])
    trainer = prepare(sys.argv[2:])
    mapped = getattr(trainer.train_batches.loader.dataset.token_ids.base, "filename", None)
    recorder = _Recorder(trainer.train_batches)
    trainer.train_batches = recorder
    trainer.fit()
    torch.save(
        {
            "rank": dist.rank(),
            "world_size": dist.world_size(),
            "rows": recorder.rows,
            "model": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
            "ema": {str(r): [p.detach().clone() for p in ps] for r, ps in trainer.ema.items()},
            "sampler": trainer.objective.state_dict(),
            "rng": torch.get_rng_state(),
            "mapped": None if mapped is None else str(mapped),  # the cache file, when mapped
        },
        out / f"rank{dist.rank()}.pt",
    )
    dist.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
