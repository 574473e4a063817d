"""Reproducible per-example noise for decoding.

The original draws every random tensor of a decoding batch from the global torch RNG
(docs/original.md §6.9), so its output depends on the batch size, the number of GPUs and the position of an
example in its batch. Here every *row* (one candidate of one input example) owns a
``torch.Generator`` seeded from ``(seed, global example index)``; each sampling step draws that
row's noise ``[L, h]`` (and, for DiffuSeq-v2, its Bernoulli uniforms ``[L]``) from it. Hence:

* a batch of size 50 and one of size 7 give the same text for the same example;
* ``torchrun --nproc_per_node 2`` gives the same files as one process;
* ``--num_samples K`` with seed ``S`` gives, for candidate ``k``, exactly what a single run with
  seed ``S + k`` gives.

Samplers only see the small :class:`NoiseStream` protocol, so tests can replay stored noise
(:class:`ReplayNoise`, used for the golden loops of the original).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Protocol

import torch

from diffuseq.diffusion.broadcast import truncate_

__all__ = ["NoiseSource", "NoiseStream", "ReplayNoise", "example_seed"]


def example_seed(seed: int, index: int) -> int:
    """63-bit generator seed for (decoding seed, global example index); stable across runs.

    >>> example_seed(101, 0) == example_seed(101, 0) != example_seed(102, 0)
    True
    """
    digest = hashlib.blake2b(
        f"diffuseq-noise:{int(seed)}:{int(index)}".encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class NoiseStream(Protocol):
    """What a sampler draws per step: Gaussian noise ``[B, L, h]`` and uniforms ``[B, L]``."""

    def gaussian(self, *, top_p: float | None = None) -> torch.Tensor: ...

    def uniform(self) -> torch.Tensor: ...


class NoiseSource:
    """One generator per row; every call draws the next value of each row's own stream.

    Args:
        seeds: decoding seed of each row ``[B]`` (candidate ``k`` of a run with seed ``S``
            uses ``S + k``).
        indices: global index of each row's example in the decoded input ``[B]``.
        shape: per-row shape ``(L, h)``.
        device: where the generators and the draws live (CPU and CUDA streams differ).
    """

    def __init__(
        self,
        seeds: Sequence[int],
        indices: Sequence[int],
        *,
        shape: tuple[int, int],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if len(seeds) != len(indices):
            raise ValueError(f"{len(seeds)} seeds for {len(indices)} indices")
        self.shape, self.device, self.dtype = tuple(shape), torch.device(device), dtype
        self._generators = [
            torch.Generator(device=self.device).manual_seed(example_seed(s, i))
            for s, i in zip(seeds, indices)
        ]

    def __len__(self) -> int:
        return len(self._generators)

    def gaussian(self, *, top_p: float | None = None) -> torch.Tensor:
        """Next N(0, I) draw ``[B, L, h]``; with ``top_p > 0`` every entry lies in
        ``[-top_p, top_p]`` (the original's truncation, bounded: :func:`truncate_`)."""
        if top_p is not None and not math.isfinite(top_p):
            raise ValueError(f"top_p must be a finite number (<= 0: off), got {top_p!r}")
        out = torch.empty((len(self), *self.shape), device=self.device, dtype=self.dtype)
        for row, generator in zip(out, self._generators):
            row.normal_(generator=generator)
            if top_p is not None and top_p > 0:
                truncate_(row, top_p, generator)
        return out

    def uniform(self) -> torch.Tensor:
        """Next U[0, 1) draw ``[B, L]`` (v2 Bernoulli decisions: ``draw = uniform < p``)."""
        out = torch.empty((len(self), self.shape[0]), device=self.device, dtype=self.dtype)
        for row, generator in zip(out, self._generators):
            row.uniform_(generator=generator)
        return out


class ReplayNoise:
    """Replays stored draws in order: ``gaussians [S, B, L, h]``, optional ``uniforms [S, B, L]``.

    Used to feed the original's recorded step noise (golden G4/G6) to our samplers; ``top_p`` is
    ignored (the stored values are already final).
    """

    def __init__(self, gaussians: torch.Tensor, uniforms: torch.Tensor | None = None) -> None:
        self._gaussians, self._uniforms = gaussians, uniforms
        self._g = self._u = 0

    def gaussian(self, *, top_p: float | None = None) -> torch.Tensor:
        self._g += 1
        return self._gaussians[self._g - 1]

    def uniform(self) -> torch.Tensor:
        if self._uniforms is None:
            raise ValueError("no stored uniforms to replay")
        self._u += 1
        return self._uniforms[self._u - 1]
