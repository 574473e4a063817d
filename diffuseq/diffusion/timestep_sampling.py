"""Which timesteps training draws: distributions over t (docs/original.md §5.8, golden G7).

Reimplements the original `diffuseq/step_sample.py` ("schedule samplers": `UniformSampler`,
`LossSecondMomentResampler`, `FixSampler`, themselves improved-diffusion's `resample.py`,
Nichol & Dhariwal 2021 §3.3). Here "sampler" means only a decoding algorithm, so the classes
are named after the distribution they draw t from: importance sampling
of ``t`` with weights ``1/(T·p_t)`` so the expected weighted loss is unbiased.

Differences from the original, none of which changes a number:

* ``sample`` accepts an explicit ``numpy.random.Generator``; without one it uses the legacy
  global numpy RNG (``np.random.choice``) exactly as the original.
* :class:`LossSecondMomentTimesteps` pads every rank's batch before the all-gather (the
  original only works when all ranks have equal micro-batch sizes, docs/original.md §10.1 item 22) and
  has ``state_dict``/``load_state_dict`` for exact resume.

Beyond the original, every distribution takes a noise floor ``min_timestep`` (``--noise_floor``,
off by default): DINOISER (Ye et al. 2023, "DINOISER: Diffused Conditional Sequence Learning by
Manipulating Noises") observes that at small noise scales the clean embedding can be
read off ``z_t``, so those steps teach the model little and let it ignore the source; it clips
the training noise scale from below. Here the weights of ``t < t_min`` are 0, so ``t`` is drawn
from ``[t_min, T)`` only, and the importance weights ``1/(N·p_t)`` use the number
``N = len(w) − t_min`` of allowed steps (unbiased for the mean loss over the allowed steps).
With ``min_timestep = 0`` every number is the original's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from diffuseq.diffusion.timesteps import TIMESTEP_DISTRIBUTION_NAMES, noise_floor_step

__all__ = [
    "TIMESTEP_DISTRIBUTIONS",
    "TimestepDistribution",
    "UniformTimesteps",
    "FixStepTimesteps",
    "LossAwareTimesteps",
    "LossSecondMomentTimesteps",
    "create_timestep_distribution",
    "floor_timestep",
    "gather_losses",
    "noise_floor_step",
]


def floor_timestep(noise_floor: float, timestep_map: Sequence[int] | np.ndarray, T: int) -> int:
    """The first index allowed by a noise floor ``F`` (DINOISER's lower clip of the noise scale).

    ``t_min = round(F·T)`` in the original ``T``-step process; with a respaced process
    (``timestep_map[k]`` = original index of step ``k``, ascending) the floor is the first ``k``
    with ``timestep_map[k] ≥ t_min``.

    Example:
        >>> floor_timestep(0.25, range(100), 100)
        25
        >>> floor_timestep(0.3, [0, 25, 50, 75], 100)  # t_min = 30 -> step 2 (original 50)
        2
    """
    t_min = noise_floor_step(noise_floor, T)
    return int(np.searchsorted(np.asarray(timestep_map, dtype=np.int64), t_min, side="left"))


def gather_losses(
    local_ts: torch.Tensor, local_losses: torch.Tensor
) -> tuple[list[int], list[float]]:
    """Every rank's per-example ``(t, loss)`` pairs, concatenated in rank order (identical on
    every rank), as Python lists; without ``torch.distributed`` (or with one rank), this
    rank's own values.

    The ranks all-gather their batch sizes, then the (padded to the largest batch) timesteps
    and losses (the original only works with equal micro-batch sizes, docs/original.md §10.1
    item 22).

    Args:
        local_ts: int ``[b]``; local_losses: float ``[b]`` (same device; gloo: CPU).
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return local_ts.tolist(), local_losses.detach().tolist()
    world = dist.get_world_size()
    device = local_ts.device
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([len(local_ts)], dtype=torch.int64, device=device))
    sizes = [int(s.item()) for s in sizes]
    max_bs = max(sizes)
    padded_ts = torch.zeros(max_bs, dtype=torch.int64, device=device)
    padded_ts[: len(local_ts)] = local_ts
    padded_losses = torch.zeros(max_bs, dtype=local_losses.dtype, device=device)
    padded_losses[: len(local_losses)] = local_losses.detach()
    all_ts = [torch.zeros_like(padded_ts) for _ in range(world)]
    all_losses = [torch.zeros_like(padded_losses) for _ in range(world)]
    dist.all_gather(all_ts, padded_ts)
    dist.all_gather(all_losses, padded_losses)
    ts = [x for chunk, n in zip(all_ts, sizes) for x in chunk[:n].tolist()]
    losses = [x for chunk, n in zip(all_losses, sizes) for x in chunk[:n].tolist()]
    return ts, losses


class TimestepDistribution(ABC):
    """A distribution over timesteps ``min_timestep..len(weights())−1`` with importance weights.

    Subclasses set ``self.min_timestep`` (the noise floor ``t_min``; 0 = the original's
    support) through :meth:`_set_floor`.
    """

    min_timestep: int = 0

    def _set_floor(self, min_timestep: int, support: int) -> None:
        """Store ``t_min``; ValueError unless ``0 ≤ t_min < support`` (at least one step left)."""
        if not 0 <= int(min_timestep) < support:
            raise ValueError(
                f"noise floor step {min_timestep} leaves no timestep of the {support} this "
                "distribution draws from"
            )
        self.min_timestep = int(min_timestep)

    def _floored(self, weights: np.ndarray) -> np.ndarray:
        """``weights`` with the entries below ``t_min`` set to 0 (in place; returned)."""
        weights[: self.min_timestep] = 0.0
        return weights

    @abstractmethod
    def weights(self) -> np.ndarray:
        """Unnormalised float64 sampling weights ``[T]`` (positive from ``t_min`` on, 0 below)."""

    def sample(
        self,
        batch_size: int,
        *,
        device: torch.device | str = "cpu",
        generator: np.random.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``batch_size`` timesteps.

        ``p = w/Σw``; ``t ~ choice(len(p), p=p)`` (legacy global ``np.random`` when
        ``generator`` is None, as the original); weight ``1/(N·p_t)`` with ``N = len(p) − t_min``
        the number of allowed steps (``len(p)`` without a floor, as the original).

        Returns:
            ``(t int64 [B], weights float32 [B])`` on ``device``.
        """
        w = self.weights()
        p = w / np.sum(w)
        if generator is None:
            indices = np.random.choice(len(p), size=(batch_size,), p=p)
        else:
            indices = generator.choice(len(p), size=(batch_size,), p=p)
        importance = 1 / ((len(p) - self.min_timestep) * p[indices])
        t = torch.from_numpy(np.asarray(indices)).long().to(device)
        return t, torch.from_numpy(importance).float().to(device)


class UniformTimesteps(TimestepDistribution):
    """``w_t = 1`` for all ``t ≥ t_min`` (importance weights all 1)."""

    def __init__(self, num_timesteps: int, *, min_timestep: int = 0) -> None:
        self._set_floor(min_timestep, num_timesteps)
        self._weights = self._floored(np.ones([num_timesteps], dtype=np.float64))

    def weights(self) -> np.ndarray:
        return self._weights


class FixStepTimesteps(TimestepDistribution):
    """DiffuSeq's ``fixstep``: weight 1 on the first half of the steps, 0.5 on the second.

    Faithful to the original, the weights are ``[1]·(T//2) + [0.5]·(T//2)``: for odd ``T`` the
    array has ``T−1`` entries, so the last step ``T−1`` is never drawn and the importance
    weights use ``T−1`` in place of ``T``. Steps below ``t_min`` get weight 0.
    """

    def __init__(self, num_timesteps: int, *, min_timestep: int = 0) -> None:
        half = num_timesteps // 2
        self._set_floor(min_timestep, 2 * half)
        self._weights = self._floored(np.concatenate([np.ones([half]), np.zeros([half]) + 0.5]))

    def weights(self) -> np.ndarray:
        return self._weights


class LossAwareTimesteps(TimestepDistribution):
    """A sampler whose weights follow the training losses (synchronised across ranks)."""

    def update_with_local_losses(self, local_ts: torch.Tensor, local_losses: torch.Tensor) -> None:
        """Record this rank's per-example (unweighted, detached) losses: every rank replays
        :func:`gather_losses` (all ranks' values in rank order), so all ranks end identical.

        Args:
            local_ts: int ``[b]``; local_losses: float ``[b]`` (same device; gloo: CPU).
        """
        self.update_with_all_losses(*gather_losses(local_ts, local_losses))

    @abstractmethod
    def update_with_all_losses(self, ts: Sequence[int], losses: Sequence[float]) -> None:
        """Record the losses of all ranks (identical call on every rank)."""


class LossSecondMomentTimesteps(LossAwareTimesteps):
    """``lossaware``: ``p_t ∝ √E[L_t²]`` over the last ``history_per_term`` losses of step t.

    Uniform until every step has a full history; then ``w = √mean(history²)``, normalised to
    sum 1 and mixed with ``uniform_prob`` of the uniform distribution. With a noise floor all
    of this runs over the allowed steps ``t ≥ t_min`` only (warm-up waits for their histories
    alone; the uniform part is spread over them); the weights below ``t_min`` are 0.
    """

    def __init__(
        self,
        num_timesteps: int,
        *,
        history_per_term: int = 10,
        uniform_prob: float = 0.001,
        min_timestep: int = 0,
    ) -> None:
        self.num_timesteps = int(num_timesteps)
        self._set_floor(min_timestep, self.num_timesteps)
        self.history_per_term = int(history_per_term)
        self.uniform_prob = float(uniform_prob)
        self._loss_history = np.zeros([self.num_timesteps, self.history_per_term], dtype=np.float64)
        self._loss_counts = np.zeros([self.num_timesteps], dtype=np.int64)

    def weights(self) -> np.ndarray:
        out = np.zeros([self.num_timesteps], dtype=np.float64)
        if not self.warmed_up():
            out[self.min_timestep :] = 1.0
            return out
        weights = np.sqrt(np.mean(self._loss_history[self.min_timestep :] ** 2, axis=-1))
        weights /= np.sum(weights)
        weights *= 1 - self.uniform_prob
        weights += self.uniform_prob / len(weights)
        out[self.min_timestep :] = weights
        return out

    def update_with_all_losses(self, ts: Sequence[int], losses: Sequence[float]) -> None:
        for t, loss in zip(ts, losses):
            t = int(t)
            if self._loss_counts[t] == self.history_per_term:
                # Full ring: drop the oldest, append the newest.
                self._loss_history[t, :-1] = self._loss_history[t, 1:]
                self._loss_history[t, -1] = loss
            else:
                self._loss_history[t, self._loss_counts[t]] = loss
                self._loss_counts[t] += 1

    def warmed_up(self) -> bool:
        """True once every allowed timestep (``t ≥ t_min``) holds ``history_per_term`` losses."""
        return bool((self._loss_counts[self.min_timestep :] == self.history_per_term).all())

    @property
    def loss_history(self) -> np.ndarray:
        """float64 ``[T, history_per_term]`` (unfilled slots hold 0); a copy."""
        return self._loss_history.copy()

    @property
    def loss_counts(self) -> np.ndarray:
        """int64 ``[T]`` number of stored losses per step; a copy."""
        return self._loss_counts.copy()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed for an exact resume (tensors, so ``torch.save`` handles it)."""
        return {
            "loss_history": torch.from_numpy(self._loss_history.copy()),
            "loss_counts": torch.from_numpy(self._loss_counts.copy()),
            "history_per_term": self.history_per_term,
            "uniform_prob": self.uniform_prob,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        history = np.asarray(state["loss_history"], dtype=np.float64)
        counts = np.asarray(state["loss_counts"], dtype=np.int64)
        expected = (self.num_timesteps, self.history_per_term)
        if history.shape != expected or counts.shape != (self.num_timesteps,):
            raise ValueError(
                f"sampler state has history {history.shape} and counts {counts.shape}; "
                f"expected {expected} and ({self.num_timesteps},)"
            )
        if int(state.get("history_per_term", self.history_per_term)) != self.history_per_term:
            raise ValueError("sampler state was saved with a different history_per_term")
        self._loss_history = history.copy()
        self._loss_counts = counts.copy()
        self.uniform_prob = float(state.get("uniform_prob", self.uniform_prob))


_DISTRIBUTIONS = {
    "uniform": UniformTimesteps,
    "lossaware": LossSecondMomentTimesteps,
    "fixstep": FixStepTimesteps,
}

#: Names accepted by :func:`create_timestep_distribution`.
TIMESTEP_DISTRIBUTIONS: tuple[str, ...] = tuple(_DISTRIBUTIONS)
assert TIMESTEP_DISTRIBUTIONS == TIMESTEP_DISTRIBUTION_NAMES, "see diffuseq.diffusion.timesteps"


def create_timestep_distribution(
    name: str, diffusion_or_T: Any, *, noise_floor: float = 0.0
) -> TimestepDistribution:
    """Build a sampler by name (``uniform``, ``lossaware``, ``fixstep``).

    Args:
        diffusion_or_T: ``T`` or any object with ``num_timesteps`` (a ``GaussianDiffusion``;
            its ``timestep_map`` and ``original_num_steps`` place the floor when respaced).
        noise_floor: ``F`` in ``[0, 1)``: draw only ``t ≥ t_min``, :func:`floor_timestep`.

    Raises:
        ValueError: unknown name; the message lists the choices.
    """
    if name not in _DISTRIBUTIONS:
        raise ValueError(
            f"unknown schedule sampler: {name!r}; choose one of {', '.join(TIMESTEP_DISTRIBUTIONS)}"
        )
    T = int(getattr(diffusion_or_T, "num_timesteps", diffusion_or_T))
    timestep_map = getattr(diffusion_or_T, "timestep_map", np.arange(T))
    original_T = int(getattr(diffusion_or_T, "original_num_steps", T))
    min_timestep = floor_timestep(noise_floor, timestep_map, original_T)
    return _DISTRIBUTIONS[name](T, min_timestep=min_timestep)
