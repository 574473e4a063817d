"""DiffuSeq-v2's modified DPM-Solver++ loop (docs/original.md §8), kept to reproduce v2 numbers.

The original v2 decoder (`sample_seq2seq_dpmSolver.py` with a modified copy of DPM-Solver's
`dpm_solver_pytorch.py`) is not standard DPM-Solver++, so it cannot be a diffusers scheduler:

* continuous time on ``t_n = (n+1)/N`` with ``log α_n = ½·Σ_{s≤n} log(1−β_s)`` (float32),
  piecewise-linear interpolation in ``t`` (§8.1); ``σ = √(1−α²)``, ``λ = log α − log σ``;
* the network receives ``t·1000`` (one discrete index later than training's ``n·1000/N``),
  its x_0 output goes through the ε round trip ``ε̂ = (x − α f)/σ``, ``D = (x − σ ε̂)/α`` (§8.2);
* grid ``linspace(1, 1/N, steps+1)``, multistep order 2, lower-order final step only when
  ``steps < 10`` (§8.3);
* after every update the **state is replaced by the anchored data prediction** (§8.4);
* no rounding, no μ shift, no discrete noise.

Our default ``dpm-solver++`` sampler (:func:`diffuseq.sampling.dpm_solver_sample`) is the
standard algorithm; this one is ``--sampler dpm-solver++-v2`` (the first releases'
``--sampler dpm-solver++ --dpm_v2_variant``).
"""

from __future__ import annotations

import numpy as np
import torch

from diffuseq.sampling.common import anchor_source, progress_steps
from diffuseq.sampling.inputs import SamplerInputs

__all__ = ["DiscreteVPSchedule", "dpm_solver_v2_sample"]


class DiscreteVPSchedule:
    """DPM-Solver's ``NoiseScheduleVP('discrete', betas)`` (docs/original.md §8.1) on ``device``, float32.

    Args:
        betas: float64 ``[N]`` of the diffusion (the full chain).
    """

    def __init__(self, betas: np.ndarray, *, device: torch.device | str = "cpu") -> None:
        self.N = len(betas)
        betas64 = torch.from_numpy(np.asarray(betas, dtype=np.float64))
        self.t_grid = torch.linspace(0.0, 1.0, self.N + 1)[1:].to(device)  # t_n = (n+1)/N
        self.log_alpha_grid = (0.5 * torch.log(1.0 - betas64).cumsum(0)).float().to(device)

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """``log α(t)``: linear interpolation on the grid, linear extrapolation outside it."""
        xp, fp = self.t_grid, self.log_alpha_grid
        flat = t.reshape(-1)
        right = torch.searchsorted(xp, flat).clamp(1, self.N - 1)
        x0, x1, y0, y1 = xp[right - 1], xp[right], fp[right - 1], fp[right]
        return (y0 + (flat - x0) * (y1 - y0) / (x1 - x0)).reshape(t.shape)

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.log_alpha(t))

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(1.0 - torch.exp(2.0 * self.log_alpha(t)))

    def lam(self, t: torch.Tensor) -> torch.Tensor:
        """Half log-SNR ``λ(t) = log α − log σ``."""
        log_alpha = self.log_alpha(t)
        return log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))


def _update(
    vp: DiscreteVPSchedule,
    x: torch.Tensor,
    prev_d: list[torch.Tensor],
    prev_t: list[torch.Tensor],
    t: torch.Tensor,
    order: int,
) -> torch.Tensor:
    """DPM-Solver++ multistep update to ``t`` (``h = λ_t − λ_s``, ``φ₁ = expm1(−h)``).

    order 1: ``x_t = (σ_t/σ_s)·x − α_t φ₁·D_s``;
    order 2: additionally ``− ½ α_t φ₁·D₁`` with ``D₁ = (D_s − D_{s'})/r₀``,
    ``r₀ = (λ_s − λ_{s'})/h``.
    """
    s = prev_t[-1]
    h = vp.lam(t) - vp.lam(s)
    alpha_phi = vp.alpha(t) * torch.expm1(-h)
    x_t = (vp.sigma(t) / vp.sigma(s)) * x - alpha_phi * prev_d[-1]
    if order == 2:
        r0 = (vp.lam(s) - vp.lam(prev_t[-2])) / h
        x_t = x_t - 0.5 * alpha_phi * (prev_d[-1] - prev_d[-2]) / r0
    return x_t


@torch.no_grad()
def dpm_solver_v2_sample(inputs: SamplerInputs, *, order: int = 2) -> torch.Tensor:
    """DiffuSeq-v2's DPM-Solver++(2M) loop, exactly as docs/original.md §8.4 (``steps`` model calls).

    With ``A(x) = where(m==0, x_start, x)`` and ``D(x, t)`` the data prediction:

    1. ``x ← A(D(x_T, t_0))``; history ``[x]`` at ``[t_0]``;
    2. for ``k = 1 … order−1``: ``x ← A(update_k(x → t_k))``, ``x ← A(D(x, t_k))``, append;
    3. for ``k = order … steps``: ``x ← A(update(x → t_k))`` of order
       ``min(order, steps+1−k)`` if ``steps < 10`` else ``order``; shift the history; if
       ``k < steps``: ``x ← A(D(x, t_k))`` replaces its newest entry.

    Returns the last update's output (at ``t = 1/N``). ``denoised_fn``/``clamp_step`` are
    ignored (the original does not round on this path), as are ``noise``/``top_p``
    (deterministic) and ``mean_embed`` (no μ shift).
    """
    model, x_T, input_mask, x_start = (
        inputs.network(),
        inputs.x_T,
        inputs.input_mask,
        inputs.x_start,
    )
    steps = inputs.step_count("dpm-solver++-v2")
    vp = DiscreteVPSchedule(inputs.diffusion.betas, device=x_T.device)
    grid = torch.linspace(1.0, 1.0 / vp.N, steps + 1, device=x_T.device)
    order = min(order, steps)
    batch = x_T.shape[0]

    def data_prediction(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        f = model(x, (t * 1000.0).expand(batch))  # DiffuSeq's time input t·1000 (§8.2)
        alpha, sigma = vp.alpha(t), vp.sigma(t)
        eps = (x - alpha * f) / sigma
        return anchor_source((x - sigma * eps) / alpha, input_mask, x_start)

    def report(step: int, k: int, x: torch.Tensor) -> None:
        if inputs.callback is not None:
            inputs.callback({"step": step, "t": float(grid[k]), "sample": x})

    x = data_prediction(x_T, grid[0])
    prev_d, prev_t = [x], [grid[0]]
    for k in range(1, order):
        x = anchor_source(_update(vp, x, prev_d, prev_t, grid[k], k), input_mask, x_start)
        prev_t.append(grid[k])
        x = data_prediction(x, grid[k])
        prev_d.append(x)
        report(k - 1, k, x)
    for k in progress_steps(list(range(order, steps + 1)), inputs.progress, "dpm-solver++ (v2)"):
        step_order = min(order, steps + 1 - k) if steps < 10 else order
        x = anchor_source(_update(vp, x, prev_d, prev_t, grid[k], step_order), input_mask, x_start)
        prev_d, prev_t = prev_d[1:] + prev_d[-1:], prev_t[1:] + [grid[k]]
        if k < steps:
            x = data_prediction(x, grid[k])
            prev_d[-1] = x
        report(k - 1, k, x)
    return x
