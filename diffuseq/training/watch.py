"""What stops a training run early: a non-finite loss or gradient, and a stop signal.

Beyond the original, which trains on through NaNs (and writes NaN checkpoints) and dies
without a save on SIGTERM.

**Divergence.** :meth:`RunWatch.observe` records, on the device and without synchronising,
the first step whose loss (every micro-batch) or gradient norm (every update; the one
``--gradient_clipping`` computes anyway, else the one logged as ``grad_norm``) is not finite.
:meth:`RunWatch.check_finite` reads it back (one device-to-host transfer) on the log interval,
when the metrics are read back anyway, and before every checkpoint, where it also checks the
weights themselves; the ranks agree (an all-gather of one integer), and every rank raises
:class:`TrainingDiverged` naming the step and the last good checkpoint. So the per-step cost
is two or three tiny kernels, nothing is waited for, and no checkpoint (nor model folder) ever
holds the diverged weights. With ``--use_fp16`` the gradient norm is not watched: the
GradScaler skips updates with inf/NaN gradients, which is how it finds its scale.

**Stop signals.** While :meth:`RunWatch.signals` is active, SIGTERM (what Slurm and most
schedulers send before killing a job) and SIGINT (Ctrl-C) only set a flag. After each update
:meth:`RunWatch.stop_requested` tells whether any rank got one: an all-reduce of one integer
over a CPU (gloo) group, so no device synchronisation; without a process group it only reads
the flag. The trainer then saves a full training state at that step on every rank and raises
:class:`TrainingInterrupted`, whose message is the command that continues the run (exit
status 128 + the signal: 143 for SIGTERM, 130 for SIGINT). A second Ctrl-C stops at once,
without saving.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from diffuseq.errors import UserError
from diffuseq.runtime import dist
from diffuseq.store.checkpoint import state_file_name

__all__ = ["RunWatch", "TrainingDiverged", "TrainingInterrupted", "resume_command"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_NONE = -1


class TrainingDiverged(UserError):
    """The loss or the gradients became NaN or infinite (nothing of it was saved)."""


class TrainingInterrupted(KeyboardInterrupt):
    """A stop signal arrived; the training state of :attr:`step` was saved to :attr:`state`.

    ``exit_code`` is the shell's status of a process killed by that signal (128 + number);
    ``quiet``: the command line prints nothing (ranks other than 0, whose lines would only
    interleave with rank 0's resume command on the shared stderr)."""

    def __init__(
        self, message: str, *, signum: int, step: int, state: Path | None, quiet: bool = False
    ):
        super().__init__(message)
        self.signum, self.step, self.state, self.quiet = signum, step, state, quiet
        self.exit_code = 128 + signum


def resume_command(state: Path, world_size: int) -> str:
    """The command that continues a run from its training state ``state``."""
    launcher = (
        f"torchrun --standalone --nproc_per_node {world_size} -m" if world_size > 1 else "python -m"
    )
    return f"{launcher} diffuseq.cli.train --resume_checkpoint {state}"


class RunWatch:
    """Non-finite values and stop signals of one rank (see the module docstring)."""

    def __init__(self, *, world_size: int = 1, run_dir: Path = Path("."), lr: float = 0.0) -> None:
        self.world_size, self.run_dir, self.lr = world_size, Path(run_dir), lr
        self._first_bad: torch.Tensor | None = None  # 0-dim int64 on the device, -1: none
        self.signum: int | None = None
        self._group = None
        if world_size > 1 and dist.is_initialized():
            backend = torch.distributed.get_backend()
            self._group = (
                torch.distributed.group.WORLD
                if backend == "gloo"
                else torch.distributed.new_group(backend="gloo")
            )

    # ------------------------------------------------------------------------- divergence
    def observe(self, value: torch.Tensor, *, index: int) -> None:
        """Remember ``index`` if ``value`` has a non-finite entry and none was seen before
        (on ``value``'s device; no synchronisation)."""
        bad = ~torch.isfinite(value.detach()).all()
        if self._first_bad is None:
            self._first_bad = torch.full((), _NONE, dtype=torch.long, device=value.device)
        first = self._first_bad
        self._first_bad = torch.where(bad & (first == _NONE), index, first)

    def first_bad_step(self, params: Sequence[torch.Tensor] = (), *, step: int) -> int | None:
        """The first step with a non-finite loss or gradient norm, on any rank (``None``:
        none); with ``params``, a non-finite weight counts as ``step``. A collective."""
        first = _NONE if self._first_bad is None else int(self._first_bad.item())
        if first == _NONE and params and not _finite(params):
            first = step
        seen = [s for s in dist.all_gather_object(first) if s != _NONE]
        return min(seen) if seen else None

    def check_finite(
        self, params: Sequence[torch.Tensor] = (), *, step: int, last_saved_step: int
    ) -> None:
        """Raise :class:`TrainingDiverged` on every rank when :meth:`first_bad_step` finds one."""
        bad = self.first_bad_step(params, step=step)
        if bad is None:
            return
        lr, state = self.lr, self.run_dir / state_file_name(last_saved_step)
        if last_saved_step > 0 and state.is_file():
            where = (
                f"the last good checkpoint is {state} (step {last_saved_step}); continue from "
                f"it with a lower --lr (now {lr:g}) or --gradient_clipping 1.0: "
                f"{resume_command(state, self.world_size)} --lr {lr / 10:g}"
            )
        else:
            where = (
                "no checkpoint was saved before it; start again with a lower --lr "
                f"(now {lr:g}) or --gradient_clipping 1.0"
            )
        raise TrainingDiverged(
            f"training diverged: the loss or the gradient norm is NaN or infinite at step {bad} "
            f"(as metrics.jsonl counts steps); nothing after step {max(last_saved_step, 0)} was "
            f"saved and no model folder is written. {where}"
        )

    # ------------------------------------------------------------------------- signals
    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """SIGTERM and SIGINT set :attr:`signum` instead of ending the process (main thread
        only; the previous handlers come back on leaving)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame) -> None:
        if self.signum is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now, without saving
            return
        self.signum = signum
        name = signal.Signals(signum).name
        os.write(2, f"{name} received: saving a training state after this step\n".encode())

    def stop_requested(self) -> bool:
        """Whether any rank got a stop signal (then :attr:`signum` is the agreed one)."""
        if self._group is None:
            return self.signum is not None
        value = torch.tensor([self.signum or 0], dtype=torch.long)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX, group=self._group)
        if int(value) > 0:
            self.signum = int(value)
        return int(value) > 0

    def interrupted(self, *, step: int, rank: int) -> TrainingInterrupted:
        """The :class:`TrainingInterrupted` to raise once the state of ``step`` is saved."""
        assert self.signum is not None
        name = signal.Signals(self.signum).name
        state = self.run_dir / state_file_name(step)
        if rank == 0:
            message = (
                f"{name}: saved the training state of step {step} to {state}; continue "
                f"the run with: {resume_command(state, self.world_size)}"
            )
        else:
            message = f"{name}: rank 0 saved the training state of step {step}"
        return TrainingInterrupted(
            message, signum=self.signum, step=step, state=state, quiet=rank != 0
        )


def _finite(params: Sequence[torch.Tensor]) -> bool:
    """Whether every weight is finite (one device-to-host transfer)."""
    norms = torch._foreach_norm([p.detach() for p in params], float("inf"))
    return bool(torch.isfinite(torch.stack(norms)).all())
