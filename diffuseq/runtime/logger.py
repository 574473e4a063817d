"""Rank-0 logging and an interval-averaging metrics writer.

Replaces the original's copied OpenAI-baselines logger (`diffuseq/utils/logger.py`, docs/original.md §2.8):

* messages go through the stdlib ``logging`` logger ``"diffuseq"``; :func:`setup_logging`
  (called by the command-line entry points, never at import) lets only rank 0 print INFO and
  also writes them to ``<run>/log.txt``. The original let every rank open and truncate the same
  ``log.txt`` / ``progress.csv`` (docs/original.md §10.1 item 15).
* :class:`MetricsWriter` has the original's ``logkv`` / ``logkv_mean`` / ``dumpkvs`` semantics:
  each key is averaged over the values added since the last dump. Values stay on the device
  (running sums of tensors); the only host synchronisation is one transfer per dump.
  Each dump becomes one JSON object in ``metrics.jsonl`` (instead of ``progress.csv``), a line
  on the console and one ``log(record, step=...)`` call on each tracker: a wandb run
  (``--wandb``) and/or :class:`TensorBoardTracker` (``--tensorboard``: the same keys as
  TensorBoard scalars in ``<run>/tensorboard/``), opened by :func:`open_trackers`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from diffuseq.errors import ConfigError

LOGGER_NAME = "diffuseq"
_HANDLER_TAG = "_diffuseq_handler"

# Keys shown on the console line of a dump (the full set goes to metrics.jsonl).
CONSOLE_KEYS = (
    "step",
    "samples",
    "loss",
    "mse",
    "nll",
    "grad_norm",
    "lr",
    "eval_loss",
    "eval_mse",
    "eval_nll",
)


def get_logger(name: str | None = None) -> logging.Logger:
    """The package logger (or a child ``diffuseq.<name>``)."""
    return logging.getLogger(LOGGER_NAME if not name else f"{LOGGER_NAME}.{name}")


def setup_logging(
    *, is_main: bool, log_file: str | Path | None = None, level: int = logging.INFO
) -> None:
    """Configure the ``diffuseq`` logger: rank 0 logs INFO to stderr (and ``log_file``),
    other ranks only WARNING and above. Calling it again replaces the handlers it added."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in [h for h in logger.handlers if getattr(h, _HANDLER_TAG, False)]:
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(level if is_main else logging.WARNING)
    logger.propagate = False
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    handlers: list[logging.Handler] = [_TqdmSafeHandler(sys.stderr)]
    if is_main and log_file is not None:
        handlers.append(logging.FileHandler(log_file, mode="a", encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(fmt)
        setattr(handler, _HANDLER_TAG, True)
        logger.addHandler(handler)


class _TqdmSafeHandler(logging.StreamHandler):
    """A stream handler that prints through ``tqdm.write`` so progress bars stay intact."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


class MetricsWriter:
    """Average metrics over an interval, dump them as one record (``logkv_mean`` / ``dumpkvs``).

    Args (keyword-only):
        path: ``metrics.jsonl`` to append one JSON object per dump to (``None``: no file).
        enabled: ``False`` (ranks other than 0) makes every method a no-op.
        trackers: objects with ``log(dict, step=...)`` and optionally ``finish()`` (a wandb
            run, a :class:`TensorBoardTracker`), each given every dumped record.
        console: also log a short line of the main keys on each dump.
    """

    def __init__(
        self,
        *,
        path: str | Path | None,
        enabled: bool = True,
        trackers: Sequence[Any] = (),
        console: bool = True,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.enabled = enabled
        self.trackers = list(trackers)
        self.console = console
        # keys -> [sums [K], counts [K]]; tensors stay on their device until dump().
        self._groups: dict[tuple[str, ...], list[Any]] = {}
        self._last: dict[str, float] = {}

    def log_value(self, key: str, value: float) -> None:
        """``logkv``: keep the last value of ``key`` (plain Python numbers: step, samples)."""
        if self.enabled:
            self._last[key] = float(value)

    def log_mean(
        self, key: str, value: torch.Tensor | float, count: torch.Tensor | int = 1
    ) -> None:
        """``logkv_mean``: add ``value`` (a sum over ``count`` items) to the mean of ``key``."""
        if self.enabled:
            value = (
                value.reshape(1)
                if isinstance(value, torch.Tensor)
                else torch.tensor([float(value)])
            )
            self.log_means((key,), value, count if isinstance(count, torch.Tensor) else [count])

    def log_means(
        self, keys: tuple[str, ...], sums: torch.Tensor, counts: torch.Tensor | list[int]
    ) -> None:
        """Add ``sums[k]`` (a sum over ``counts[k]`` items) to the running mean of ``keys[k]``.

        One call per group of keys (e.g. the four quartiles), accumulated on the device without
        synchronising. Keys that never received an item are left out of the dump, as in the
        original (a quartile without examples has no value).
        """
        if not self.enabled:
            return
        keys = tuple(keys)
        sums = sums.detach().float()
        if keys not in self._groups:
            self._groups[keys] = [sums, counts]
            return
        slot = self._groups[keys]
        slot[0] = slot[0] + sums
        slot[1] = _add_counts(slot[1], counts)

    def log_loss_terms(
        self,
        prefix: str,
        terms: Mapping[str, torch.Tensor],
        weights: torch.Tensor,
        groups: torch.Tensor | None,
    ) -> None:
        """``logkv_mean`` of ``mean(v·w)`` for every loss term ``v`` (``[b]``, or 0-dim, e.g.
        v2's reg_term) with the importance weights ``w`` ``[b]``, and of each ``v·w`` under its
        group ``groups`` ``[b]`` (the quartile of t, ``None``: none), as ``<term>_q<g>``."""
        if not self.enabled:
            return
        keys = list(terms)
        weights = weights.float()
        values = torch.stack(  # [K, b] (a 0-dim term is broadcast)
            [terms[k].detach().float().expand_as(weights) * weights for k in keys]
        )
        self.log_means(tuple(prefix + k for k in keys), values.mean(dim=1), [1] * len(keys))
        if groups is None:
            return
        # per-group sums, the last row counts (index_add_ does not sync, unlike bincount)
        with_ones = torch.cat([values, torch.ones_like(values[:1])])  # [K+1, b]
        sums = values.new_zeros(len(keys) + 1, 4).index_add_(1, groups, with_ones)
        self.log_means(
            tuple(f"{prefix}{k}_q{q}" for k in keys for q in range(4)),
            sums[:-1].reshape(-1),
            sums[-1].repeat(len(keys)),
        )

    def close(self) -> None:
        """Finish every tracker (flush TensorBoard's files, end the wandb run); idempotent."""
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            if hasattr(tracker, "finish"):
                tracker.finish()

    def pending(self) -> bool:
        return bool(self._groups or self._last)

    def dump(self) -> dict[str, float]:
        """Compute the means (one device-to-host transfer per device), write them out and reset."""
        if not self.enabled:
            return {}
        groups = list(self._groups.items())
        flat = _to_float_lists([s for _, (s, _) in groups] + [c for _, (_, c) in groups])
        record: dict[str, float] = {}
        for i, (keys, _) in enumerate(groups):
            for key, total, count in zip(keys, flat[i], flat[len(groups) + i]):
                if count > 0:
                    record[key] = total / count
        record.update(self._last)
        record = {k: record[k] for k in sorted(record, key=str.lower)}
        self._groups.clear()
        self._last.clear()
        if record:
            self._write(record)
        return record

    def log_record(
        self, record: Mapping[str, float], *, text: Mapping[str, Any] | None = None
    ) -> None:
        """Write ``record`` at once as a line of its own (the averaged keys pending for the
        next :meth:`dump` are left alone), with the JSON values of ``text`` in the same line.
        Trackers get the numbers at ``record["step"]``, and each ``text`` value through their
        ``log_text`` (TensorBoard) or as a JSON string (wandb)."""
        if not self.enabled:
            return
        text = dict(text or {})
        if self.path is not None:
            line = {**{k: _jsonable(float(v)) for k, v in record.items()}, **text}
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(line) + "\n")
        step = int(record["step"]) if "step" in record else None
        for tracker in self.trackers:
            tracker.log(dict(record), step=step)
            for key, value in text.items():
                if hasattr(tracker, "log_text"):
                    tracker.log_text(key, value, step=step)
                else:
                    tracker.log({key: json.dumps(value)}, step=step)

    def _write(self, record: dict[str, float]) -> None:
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")
        step = record.get("step")
        for tracker in self.trackers:
            tracker.log(dict(record), step=int(step) if step is not None else None)
        if self.console:
            shown = [f"{k} {_fmt(record[k])}" for k in CONSOLE_KEYS if k in record]
            get_logger().info(" | ".join(shown))


def _add_counts(
    a: torch.Tensor | list[int], b: torch.Tensor | list[int]
) -> torch.Tensor | list[int]:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        device = a.device if isinstance(a, torch.Tensor) else b.device
        return torch.as_tensor(a, device=device) + torch.as_tensor(b, device=device)
    return [x + y for x, y in zip(a, b)]


def _to_float_lists(items: list[torch.Tensor | list]) -> list[list[float]]:
    """Each item (a 1-D tensor or a list of numbers) as floats; one transfer per device."""
    out: list[list[float] | None] = [
        None if isinstance(v, torch.Tensor) else [float(x) for x in v] for v in items
    ]
    by_device: dict[torch.device, list[int]] = {}
    for i, value in enumerate(items):
        if isinstance(value, torch.Tensor):
            by_device.setdefault(value.device, []).append(i)
    for indices in by_device.values():
        sizes = [items[i].numel() for i in indices]
        values = torch.cat([items[i].reshape(-1).double() for i in indices]).tolist()
        offset = 0
        for i, size in zip(indices, sizes):
            out[i] = values[offset : offset + size]
            offset += size
    return out  # type: ignore[return-value]


def _jsonable(value: float) -> float | str | int:
    if math.isfinite(value):
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    return str(value)


def _fmt(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.4g}"


def require_wandb() -> Any:
    """The wandb module (imported lazily, only when asked for).

    Raises:
        ConfigError: wandb is not installed.
    """
    try:
        import wandb
    except ImportError:
        raise ConfigError(
            "--wandb needs the wandb package, which is not installed; run `pip install wandb` "
            "or leave out --wandb (metrics are always written to metrics.jsonl)"
        ) from None
    return wandb


def open_wandb(*, run_name: str, run_dir: str | Path, config: Mapping[str, Any]) -> Any:
    """Start a wandb run (call on rank 0 only).

    The project is ``$WANDB_PROJECT`` or ``"DiffuSeq"`` as in the original; set
    ``WANDB_MODE=offline`` to log without network access.

    Raises:
        ConfigError: wandb is not installed.
    """
    return require_wandb().init(
        project=os.environ.get("WANDB_PROJECT", "DiffuSeq"),
        name=run_name,
        dir=str(run_dir),
        config=dict(config),
    )


TENSORBOARD_DIR = "tensorboard"


def require_tensorboard() -> Any:
    """``torch.utils.tensorboard.SummaryWriter`` (imported lazily, only when asked for).

    Raises:
        ConfigError: the tensorboard package is not installed.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(
            "--tensorboard needs the tensorboard package, which is not installed; run "
            "`pip install .[tensorboard]` (or `pip install tensorboard`) or leave out "
            "--tensorboard (metrics are always written to metrics.jsonl)"
        ) from None
    return SummaryWriter


class TensorBoardTracker:
    """Each dumped record as TensorBoard scalars: one tag per key (``loss``, ``mse_q0``,
    ``eval_loss``, ``samples``, ...; not ``step``) at the record's ``step``.

    Args:
        log_dir: the event files' folder (``<run>/tensorboard``).
        purge_step: a resumed run's first step: events at and after it, left by the launch
            that was interrupted, are hidden (TensorBoard's ``purge_step``).
    """

    def __init__(self, log_dir: str | Path, *, purge_step: int | None = None) -> None:
        self.writer = require_tensorboard()(log_dir=str(log_dir), purge_step=purge_step)

    def log(self, record: Mapping[str, float], step: int | None = None) -> None:
        for key, value in record.items():
            if key != "step":
                self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()  # once per dump: readable while training runs

    def log_text(self, key: str, value: Any, step: int | None = None) -> None:
        """``value`` as TensorBoard text: a list of dicts as a Markdown table, else JSON."""
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            head = list(value[0])
            rows = [" | ".join(head), " | ".join("---" for _ in head)]
            rows += [" | ".join(str(v.get(k, "")).replace("|", "\\|") for k in head) for v in value]
            text = "\n".join(rows)
        else:
            text = json.dumps(value)
        self.writer.add_text(key, text, global_step=step)
        self.writer.flush()

    def finish(self) -> None:
        self.writer.close()


def require_trackers(*, wandb: bool, tensorboard: bool) -> None:
    """Check that the packages of the requested trackers are installed (call on every rank, so
    that no rank waits for one that failed). Raises ConfigError naming the package."""
    if wandb:
        require_wandb()
    if tensorboard:
        require_tensorboard()


def open_trackers(
    *,
    wandb: bool,
    tensorboard: bool,
    run_name: str,
    run_dir: str | Path,
    config: Mapping[str, Any],
    resume_step: int | None = None,
) -> list[Any]:
    """The trackers of a training run (call on rank 0 only): a wandb run (``wandb``) and a
    :class:`TensorBoardTracker` writing to ``run_dir/tensorboard`` (``tensorboard``).

    Args:
        config: logged as the wandb run's config.
        resume_step: the step a continued run starts from (``None``: a new run).
    """
    trackers: list[Any] = []
    if wandb:
        trackers.append(open_wandb(run_name=run_name, run_dir=run_dir, config=config))
    if tensorboard:
        trackers.append(TensorBoardTracker(Path(run_dir) / TENSORBOARD_DIR, purge_step=resume_step))
    return trackers
