"""Timestep respacing: which steps of a ``T``-step process to keep (docs/original.md §5.3).

Reimplements the semantics of improved-diffusion's `space_timesteps` and of the beta
rebuild in `SpacedDiffusion.__init__` (which the original DiffuSeq inlines in
`gaussian_diffusion.py`). Pure functions: no model, no torch.

The original always builds its diffusion through `SpacedDiffusion`, even without respacing
(``timestep_respacing == ""`` keeps all steps), so its stored betas are
``1 − ᾱ_i/ᾱ_{i−1}`` rebuilt from the cumulative product; :func:`respaced_betas` reproduces
that bit for bit (it can differ from the raw schedule by ~1e-16).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["space_timesteps", "respaced_betas"]


def space_timesteps(num_timesteps: int, section_counts: str | Sequence[int]) -> set[int]:
    """Indices of the original process to keep.

    Args:
        num_timesteps: ``T`` of the original process.
        section_counts: one of

            * ``""`` — keep every step (the published DiffuSeq configuration);
            * ``"ddimN"`` — the integer stride ``i`` (smallest ``1 ≤ i < T``) with
              ``len(range(0, T, i)) == N``; keeps ``range(0, T, i)``;
            * ``"c1,c2,…"`` or a list ``[c1, c2, …]`` — split the ``T`` steps into ``k`` equal
              sections (the first ``T mod k`` one step longer); within a section of size ``S``
              keep ``c`` indices evenly spaced from its first to its last step (fractional
              stride ``(S−1)/(c−1)``, positions rounded with Python's ``round``; stride 1 when
              ``c ≤ 1``).

    Returns:
        The set of kept indices in ``[0, T)``.

    Raises:
        ValueError: a section asks for more steps than it has, or ``"ddimN"`` has no integer
            stride.

    Example (checked by ``tests/test_schedules.py``):
        >>> sorted(space_timesteps(300, [10, 15, 20]))[:12]
        [0, 11, 22, 33, 44, 55, 66, 77, 88, 99, 100, 107]
        >>> len(space_timesteps(300, "10,15,20"))
        45
        >>> sorted(space_timesteps(100, "ddim4"))
        [0, 25, 50, 75]
        >>> space_timesteps(5, "") == {0, 1, 2, 3, 4}
        True
    """
    T = int(num_timesteps)
    if isinstance(section_counts, str):
        if section_counts == "":
            return set(range(T))
        if section_counts.startswith("ddim"):
            desired = int(section_counts[len("ddim") :])
            for stride in range(1, T):
                if len(range(0, T, stride)) == desired:
                    return set(range(0, T, stride))
            raise ValueError(f"cannot create exactly {desired} of {T} steps with an integer stride")
        counts = [int(c) for c in section_counts.split(",")]
    else:
        counts = [int(c) for c in section_counts]
    if not counts:
        raise ValueError("section_counts must name at least one section")

    size_per, extra = divmod(T, len(counts))
    kept: set[int] = set()
    start = 0
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot divide a section of {size} steps into {count}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        # The position is accumulated (not j·stride) to round exactly as the original does
        # when a fractional position lands next to .5.
        position = 0.0
        for _ in range(count):
            kept.add(start + round(position))
            position += stride
        start += size
    return kept


def respaced_betas(
    betas: np.ndarray, use_timesteps: Iterable[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Betas of the process restricted to ``use_timesteps`` (docs/original.md §5.3).

    For kept indices ``s_0 < s_1 < …``: ``β'_k = 1 − ᾱ_{s_k} / ᾱ_{s_{k−1}}`` (``ᾱ_{s_{−1}} := 1``),
    so the respaced chain has exactly the original ``ᾱ`` at the kept steps.

    Args:
        betas: float64 ``[T]`` original betas.
        use_timesteps: indices to keep (any iterable; duplicates are ignored).

    Returns:
        ``(new_betas float64 [K], timestep_map int64 [K])``, ``timestep_map[k] = s_k``.
    """
    keep = set(int(i) for i in use_timesteps)
    alphas_cumprod = np.cumprod(1.0 - np.asarray(betas, dtype=np.float64), axis=0)
    last = 1.0
    new_betas: list[float] = []
    timestep_map: list[int] = []
    for i, alpha_cumprod in enumerate(alphas_cumprod):
        if i in keep:
            new_betas.append(1 - alpha_cumprod / last)
            last = alpha_cumprod
            timestep_map.append(i)
    return np.array(new_betas, dtype=np.float64), np.array(timestep_map, dtype=np.int64)
