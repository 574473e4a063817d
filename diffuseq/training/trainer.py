"""The training loop of DiffuSeq / DiffuSeq-v2.

Reimplements `TrainLoop` of the original `diffuseq/train_util.py` (docs/original.md §6): AdamW with a linear
LR anneal, micro-batch gradient accumulation with the original's semantics (the gradient is the
SUM of the micro-batch mean losses, each weighted by the timestep importance weights, docs/original.md §6.3),
DDP with ``no_sync`` on every micro-batch but the last, the loss-aware timestep sampler updated
(all-gathered) after every micro-batch, EMA at one or more rates, periodic validation loss and
the original's logged keys (``loss, mse, nll`` with ``_q0.._q3`` quartiles by ``t``,
``grad_norm, samples, step``, ``eval_*``).

Differences from the original (deliberate):

* Mixed precision through ``torch.amp`` (fp16 with a GradScaler on CUDA, or bf16 without one);
  gradients are unscaled before clipping (v2 clipped the still-scaled gradients, docs/original.md §10.2
  item 7). v1's fp16 crashed (docs/original.md §6.4). ``--tf32`` and ``--compile``: see
  :mod:`diffuseq.training.precision`.
* DDP also on CPU (gloo); the loss reaches the embedding/logits through the unwrapped model
  instead of ``model.model.module`` (docs/original.md §10.3).
* Full training states are saved next to the EMA files, for an exact resume (docs/original.md §6.7: the
  original saved and resumed EMA weights only, with a fresh optimizer). Files are named by the
  number of optimizer updates they hold; the original's in-loop files held one more update than
  their name says.
* The data pipeline never draws from the training RNG (each batch is fetched inside
  ``torch.random.fork_rng``), so resuming is bit-identical.
* Validation runs on rank 0 only (the original ran it on every rank and logged rank 0's).
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from diffuseq.config import TrainConfig
from diffuseq.errors import CheckpointError
from diffuseq.families.base import LossBatch, Objective
from diffuseq.models.nn_utils import ddp_without_buffer_sync, grad_norm, update_ema
from diffuseq.runtime import dist
from diffuseq.runtime.logger import MetricsWriter, get_logger
from diffuseq.runtime.progress import progress
from diffuseq.store.checkpoint import (
    STATE_FORMAT,
    STATE_VERSION,
    atomic_torch_save,
    capture_rng_state,
    copy_named_tensors,
    prune_states,
    restore_rng_state,
    save_ema_file,
    save_failure,
    seed_everything,
    state_file_name,
    to_cpu,
    write_latest,
)
from diffuseq.store.checkpoint_format import state_dict_for_saving
from diffuseq.training.precision import autocast_dtype, compile_for_training, enable_tf32
from diffuseq.training.watch import RunWatch


class Trainer:
    """Runs the optimisation of one process (one rank).

    Args (keyword-only):
        model: the unwrapped network, already on ``device`` (wrapped in DDP here when the
            process group has more than one rank).
        objective: the family's :class:`~diffuseq.families.base.Objective` (loss terms of a
            batch, importance weights, its adaptive state; ``observe`` every micro-batch,
            ``before_update`` before every update).
        train_batches: endless iterator of ``{"input_ids", "input_mask"}`` batches with
            ``state_dict``/``load_state_dict`` (:class:`diffuseq.data.dataset.InfiniteBatches`).
        valid_batches: the same for validation (rank 0), or ``None`` to skip validation.
        config: the run's :class:`TrainConfig`.
        run_dir: where checkpoints go.
        device: this rank's device.
        writer: the metrics writer (disabled off rank 0).
        run_info: plain data embedded in every state file (the run's config, training args).
        max_minutes: wall-clock budget; when spent, save and stop (``None``: no budget).
        keep_states: full training states to keep (``<= 0``: all); EMA files are never deleted.
        progress: show progress on rank 0 (a bar on a terminal, plain lines in a file).
        run_lock: the run folder's :class:`~diffuseq.store.safe_io.FolderLock` (rank 0), held until
            :meth:`close` or the end of the process.
        eval_decode: ``--eval_decode_interval``'s :class:`~diffuseq.training.eval_decode.EvalDecode`.
    """

    def __init__(
        self,
        *,
        model: torch.nn.Module,
        objective: Objective,
        train_batches: Iterator[dict[str, torch.Tensor]],
        valid_batches: Iterator[dict[str, torch.Tensor]] | None,
        config: TrainConfig,
        run_dir: str | Path,
        device: torch.device,
        writer: MetricsWriter,
        run_info: Mapping[str, Any] | None = None,
        max_minutes: float | None = None,
        keep_states: int = 2,
        progress: bool = True,
        run_lock: Any = None,
        eval_decode: Any = None,
    ) -> None:
        self.model, self.eval_decode = model, eval_decode
        self.run_lock = run_lock
        self.objective = objective
        self.train_batches = train_batches
        self.valid_batches = valid_batches
        self.config = config
        self.run_dir = Path(run_dir)
        self.device = torch.device(device)
        self.writer = writer
        self.run_info = dict(run_info or {})
        self.max_minutes, self.keep_states = max_minutes, keep_states
        self.progress = progress
        self.log = get_logger("trainer")

        self.rank, self.world_size = dist.rank(), dist.world_size()
        self.is_main = self.rank == 0
        self.amp_dtype = autocast_dtype(config, self.device)
        self.microbatch = config.effective_microbatch
        if self.world_size > 1:
            self.ddp_model: torch.nn.Module = DistributedDataParallel(
                model,
                device_ids=[self.device] if self.device.type == "cuda" else None,
                **ddp_without_buffer_sync(),
                bucket_cap_mb=128,
                find_unused_parameters=False,
            )
        else:
            self.ddp_model = model
        if config.tf32:
            enable_tf32(self.device)
        if config.compile:  # after DDP, as the PyTorch DDP notes ask (see compile_for_training)
            compile_for_training(self.ddp_model, self.device)
        self.params = [p for _, p in model.named_parameters()]
        self.param_names = [n for n, _ in model.named_parameters()]
        self.opt = torch.optim.AdamW(
            self.params,
            lr=config.lr,
            betas=(0.9, 0.999),
            eps=1e-8,
            weight_decay=config.weight_decay,
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.use_fp16)
        # EMA copies start from the (rank-0-synchronised) initial parameters (docs/original.md §6.2).
        self.ema: dict[float, list[torch.Tensor]] = {
            rate: [p.detach().clone() for p in self.params] for rate in config.ema_rates
        }
        self.step = 0  # optimizer updates done
        self.last_saved_step = -1
        self.stopped_early = False
        self._latest_loss: torch.Tensor | None = None  # of the last micro-batch, for the bar
        self.watch = RunWatch(world_size=self.world_size, run_dir=self.run_dir, lr=config.lr)

    # ------------------------------------------------------------------------------ loop
    def close(self) -> None:
        """Finish the metrics trackers; release the run folder's lock (if this trainer holds it)."""
        self.writer.close()
        if self.run_lock is not None:
            self.run_lock.release()

    def fit(self, *, until: int | None = None) -> int:
        """Train until ``learning_steps`` updates (or ``until``, or the time budget), save, and
        return the step reached. The LR schedule always follows ``learning_steps``. Raises
        TrainingDiverged or (SIGTERM/SIGINT, state saved) TrainingInterrupted: training/watch.py."""
        cfg = self.config
        stop = cfg.learning_steps if until is None else min(until, cfg.learning_steps)
        self.model.train()
        deadline = time.monotonic() + 60.0 * self.max_minutes if self.max_minutes else None
        bar = progress(
            desc="training",
            total=cfg.learning_steps,
            initial=self.step,
            enabled=self.progress and self.is_main,
        )
        with bar, self.watch.signals():
            while self.step < stop:
                index = self.step  # 0-based index of this update, as the original counts
                self.run_step(self._next_batch(self.train_batches))
                if index % cfg.log_interval == 0:
                    self.writer.dump()
                    self._check_finite()
                if self.valid_batches is not None and index % cfg.eval_interval == 0:
                    self.evaluate(self._next_batch(self.valid_batches))
                    self.writer.log_value("step", index)
                    self.writer.dump()
                if self.eval_decode is not None and self.eval_decode.due(self.step):
                    rate = next(iter(self.ema))  # the first EMA rate's weights (RNG forked)
                    bleu = self.eval_decode.run(self.ema[rate], self.step)
                    bar.set_postfix(bleu=bleu, refresh=False)  # shown from the next line on
                bar.update(1, loss=self._latest_loss)  # read only when shown
                if self.step % cfg.save_interval == 0:
                    if self.step >= stop and self.writer.pending():
                        self.writer.dump()  # the last interval's line before "saved step N"
                    self.save()
                if self.watch.stop_requested() and self.step < cfg.learning_steps:
                    self.stopped_early = True
                    break
                if deadline is not None and self._out_of_time(deadline):
                    self.stopped_early = self.step < cfg.learning_steps
                    break
            if self.writer.pending():
                self.writer.dump()  # the last, partial log interval
            if self.step != self.last_saved_step:
                self.save()
        if self.stopped_early and self.watch.signum is not None:
            raise self.watch.interrupted(step=self.step, rank=self.rank)
        if self.stopped_early:
            self.log.info(
                "stopped after %d steps: --max_minutes %g reached", self.step, self.max_minutes
            )
        return self.step

    def run_step(self, batch: Mapping[str, torch.Tensor]) -> None:
        """One optimizer update on one batch (docs/original.md §6.3)."""
        index = self.step
        note = self.objective.before_update(self.step, self.model)
        if note is not None and self.is_main:
            self.log.info("step %d: %s", self.step, note)
        self.forward_backward(batch)
        self.optimize()
        self.log_step(index)

    def forward_backward(self, batch: Mapping[str, torch.Tensor]) -> None:
        """Accumulate ``Σ_micro mean(loss·w)`` gradients; DDP syncs on the last micro-batch only."""
        self.opt.zero_grad(set_to_none=True)
        input_ids = batch["input_ids"].to(self.device, non_blocking=True)
        input_mask = batch["input_mask"].to(self.device, non_blocking=True)
        size = input_ids.shape[0]
        for start in range(0, size, self.microbatch):
            ids = input_ids[start : start + self.microbatch]
            mask = input_mask[start : start + self.microbatch]
            last = start + self.microbatch >= size
            sync = (
                contextlib.nullcontext()
                if last or self.ddp_model is self.model
                else self.ddp_model.no_sync()
            )
            with sync:
                with self._autocast():
                    batch_losses = self.objective.losses(
                        self.ddp_model, ids, mask, text_model=self.model
                    )
                self.objective.observe(batch_losses)
                loss = (batch_losses.terms["loss"].float() * batch_losses.weights).mean()
                self._latest_loss = loss.detach()
                self.watch.observe(self._latest_loss, index=self.step)
                self._log_losses("", batch_losses)
                self.scaler.scale(loss).backward()

    def optimize(self) -> None:
        """Unscale, clip, anneal the LR, step, update the EMAs (docs/original.md §6.1, §6.2, §6.4, §6.5)."""
        cfg = self.config
        self.scaler.unscale_(self.opt)  # no-op without fp16
        norm = None
        if cfg.gradient_clipping > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.gradient_clipping)
        if self.writer.enabled or norm is None:
            logged = grad_norm(self.params)  # after clipping
            self.writer.log_mean("grad_norm", logged)
            norm = logged if norm is None else norm
        if not self.scaler.is_enabled():  # fp16: the scaler skips inf/NaN gradients itself
            self.watch.observe(norm, index=self.step)
        lr = cfg.lr * (1.0 - self.step / cfg.learning_steps)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.scaler.step(self.opt)
        self.scaler.update()
        for rate, ema_params in self.ema.items():
            update_ema(ema_params, self.params, rate)
        self.step += 1

    def log_step(self, index: int) -> None:
        """``step`` and ``samples`` as the original logs them (docs/original.md §6.6)."""
        self.writer.log_value("step", index)
        self.writer.log_value("samples", (index + 1) * self.config.batch_size * self.world_size)

    @torch.no_grad()
    def evaluate(self, batch: Mapping[str, torch.Tensor]) -> None:
        """Loss of one validation batch, logged as ``eval_*`` (docs/original.md §6.6). Like the original,
        the objective draws as in training (a loss-aware sampler is not updated) and the model
        stays in train mode."""
        input_ids = batch["input_ids"].to(self.device, non_blocking=True)
        input_mask = batch["input_mask"].to(self.device, non_blocking=True)
        for start in range(0, input_ids.shape[0], self.microbatch):
            ids = input_ids[start : start + self.microbatch]
            mask = input_mask[start : start + self.microbatch]
            with self._autocast():
                batch_losses = self.objective.losses(self.model, ids, mask, text_model=self.model)
            self._log_losses("eval_", batch_losses)

    # ------------------------------------------------------------------------------ helpers
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _next_batch(self, batches: Iterator[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        # The DataLoader draws a seed from the global torch RNG whenever it starts an epoch;
        # isolating it keeps the training RNG stream independent of data-loader restarts.
        with torch.random.fork_rng(devices=[]):
            return next(batches)

    def _log_losses(self, prefix: str, batch: LossBatch) -> None:
        """Every loss term, and each under its quartile of t (``<term>_q<g>``); no sync."""
        self.writer.log_loss_terms(prefix, batch.terms, batch.weights, batch.groups)

    def _check_finite(self, *, weights: bool = False) -> None:
        """Stop with TrainingDiverged (every rank) after a non-finite loss, gradient norm or
        (``weights``) weight; see :mod:`diffuseq.training.watch`."""
        params = self.params if weights else ()
        self.watch.check_finite(params, step=self.step, last_saved_step=self.last_saved_step)

    def _out_of_time(self, deadline: float) -> bool:
        """Rank 0 decides (clocks differ between ranks) and tells the others."""
        return bool(dist.broadcast_object(time.monotonic() >= deadline if self.is_main else None))

    # ------------------------------------------------------------------------------ state
    def ema_state_dict(self, rate: float) -> OrderedDict[str, torch.Tensor]:
        """The original's EMA file content for ``rate`` (CPU; the original's container and entry
        types, see :func:`~diffuseq.store.checkpoint_format.state_dict_for_saving`)."""
        ema = dict(zip(self.param_names, self.ema[rate]))
        return state_dict_for_saving(
            self.model, ema_params=ema, tied_quirk=self.config.ema_tied_quirk
        )

    def state_dict(self, ranks: list[Mapping[str, Any]]) -> dict[str, Any]:
        """The full training state (``ranks``: every rank's RNG state and data position)."""
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "step": self.step,
            "world_size": self.world_size,
            **self.run_info,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "ema": {
                str(rate): {n: p.detach().cpu() for n, p in zip(self.param_names, params)}
                for rate, params in self.ema.items()
            },
            "optimizer": to_cpu(self.opt.state_dict()),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "sampler": self.objective.state_dict(),
            "ranks": list(ranks),
        }

    def _rank_state(self) -> dict[str, Any]:
        return {
            "rng": capture_rng_state(self.device),
            "train": self.train_batches.state_dict(),
            "valid": self.valid_batches.state_dict() if self.valid_batches is not None else None,
        }

    def save(self) -> None:
        """Write the EMA file(s), then the full state, then ``latest.json`` (rank 0); all ranks
        contribute their RNG state and data position; never diverged weights."""
        self._check_finite(weights=True)
        ranks = dist.all_gather_object(self._rank_state())
        failure = None
        if self.is_main:
            try:
                self._write_checkpoint(ranks)
            except OSError as err:  # a full disk, a quota: one message, on every rank
                failure = save_failure(err, self.run_dir, self.step, self.last_saved_step)
        message = dist.broadcast_object(failure)  # also the barrier after the save
        if message is not None:
            raise CheckpointError(message)
        self.last_saved_step = self.step

    def _write_checkpoint(self, ranks: list[Mapping[str, Any]]) -> None:
        """Rank 0: the EMA file(s), the full state, ``latest.json``; old states pruned."""
        for rate in self.ema:
            save_ema_file(
                self.run_dir, rate=rate, step=self.step, state_dict=self.ema_state_dict(rate)
            )
        name = state_file_name(self.step)
        atomic_torch_save(self.state_dict(ranks), self.run_dir / name)
        write_latest(self.run_dir, state_name=name, step=self.step)
        for path in prune_states(self.run_dir, keep=self.keep_states):
            self.log.info(
                "deleted old training state %s (--keep_states %d)", path.name, self.keep_states
            )
        self.log.info("saved step %d to %s", self.step, self.run_dir)

    def load_state(self, state: Mapping[str, Any]) -> bool:
        """Resume from :meth:`state_dict` output (RNG restored last); ``True`` when exact (the
        same number of processes), else a warning says why not."""
        self.model.load_state_dict(state["model"])
        for rate, params in self.ema.items():
            saved = state["ema"].get(str(rate))
            if saved is None:
                self.log.warning(
                    "the state has no EMA at rate %s; starting it from the weights", rate
                )
                saved = dict(zip(self.param_names, self.params))
            copy_named_tensors(params, self.param_names, saved, what=f"EMA {rate}")
        self.opt.load_state_dict(state["optimizer"])
        if self.scaler.is_enabled() and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if state.get("sampler"):
            self.objective.load_state_dict(state["sampler"])
        self.step = self.last_saved_step = int(state["step"])
        ranks = state.get("ranks") or []
        exact = len(ranks) == self.world_size
        mine = ranks[self.rank] if exact else (ranks[0] if ranks else None)
        if mine is not None:
            self.train_batches.load_state_dict(mine["train"])
            if self.valid_batches is not None and mine.get("valid") is not None:
                self.valid_batches.load_state_dict(mine["valid"])
        if exact:
            restore_rng_state(mine["rng"], self.device)
        else:
            self.log.warning(
                "the state was saved with %d process(es), this run has %d: training continues, "
                "but not bit-identically (data order and random streams differ)",
                len(ranks),
                self.world_size,
            )
            seed_everything(
                self.config.seed + self.step + (0 if self.config.same_seed_all_ranks else self.rank)
            )
        return exact

    def load_weights(
        self,
        weights: Mapping[str, torch.Tensor],
        *,
        step: int,
        ema_weights: Mapping[float, Mapping[str, torch.Tensor]] | None = None,
    ) -> None:
        """Start from original-format weights (docs/original.md §6.7): the model loads ``weights`` with the
        tied-weight rule; each EMA starts from ``ema_weights[rate]`` (its ``named_parameters``
        entries) if given, else from the loaded weights; the step count continues at ``step``
        with a fresh optimizer."""
        self.model.load_state_dict(weights)
        for rate, params in self.ema.items():
            source = (ema_weights or {}).get(rate)
            if source is None:
                source = dict(zip(self.param_names, self.params))
            copy_named_tensors(params, self.param_names, source, what=f"EMA {rate}")
        self.step = step
        self.last_saved_step = step  # nothing new to save before the first update
