"""Progress output that suits where it goes, as a configuration of tqdm: a live bar on a
terminal (or in a notebook), periodic plain lines when the stream is a file or a pipe, or under
CI (``$CI`` set).

A bar redraws itself with carriage returns and escape codes, which turn a log file into
hundreds of kilobytes of noise; a plain line (``training: 120/1000 (12%), 3.1 it/s, eta 4m43s,
elapsed 38s, loss 0.1234``) every ``$DIFFUSEQ_PROGRESS_INTERVAL`` seconds (default 30) reads
well in a file. Training (:mod:`diffuseq.training.trainer`), decoding
(:mod:`diffuseq.decoding.job`) and the samplers' inner loops (:mod:`diffuseq.sampling.common`)
all choose through :func:`progress`.

Both forms are tqdm bars (its counting, timing, ``mininterval`` throttling, iteration and
context manager); what tqdm has no setting for is added by small subclasses:

* postfix values may be callables or tensors (``update(1, loss=loss_tensor)``): they are read
  only when a line or a redraw is due, so a bar shows the latest loss without a device
  synchronisation per step (tqdm's ``set_postfix`` formats its values at once);
* the plain form: one line per refresh ending in a newline instead of a redraw ending in
  ``\\r``, one at the start and one at the end, in this toolkit's format (tqdm's
  ``bar_format`` cannot leave out the rate before the first step, and writes ``k=v``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm import tqdm as text_tqdm
from tqdm.auto import tqdm as auto_tqdm  # the notebook widget under Jupyter, else text_tqdm

__all__ = ["PlainProgress", "StepEstimate", "live_output", "progress"]

DEFAULT_INTERVAL = 30.0


def live_output(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default stderr) shows live bars: a terminal outside CI, or a notebook."""
    if "ipykernel" in sys.modules:
        return True
    if os.environ.get("CI"):
        return False
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("DIFFUSEQ_PROGRESS_INTERVAL", DEFAULT_INTERVAL)))
    except ValueError:
        return DEFAULT_INTERVAL


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _value(value: Any) -> str:
    value = value() if callable(value) else value
    if hasattr(value, "item"):
        value = value.item()  # a tensor: one host transfer, only when shown
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class _LazyPostfix:
    """tqdm mixin: ``update(n, **postfix)``; postfix values are kept as given and formatted
    only when the bar is drawn (tqdm draws from :attr:`format_dict`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.values: dict[str, Any] = {}
        super().__init__(*args, **kwargs)

    def update(self, n: int = 1, **postfix: Any) -> bool | None:
        self.values.update(postfix)
        return super().update(n)  # type: ignore[misc]

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **values: Any) -> None:
        self.values.update(ordered_dict or {}, **values)
        if refresh:
            self.refresh()  # type: ignore[attr-defined]

    @property
    def format_dict(self) -> dict[str, Any]:
        data = super().format_dict  # type: ignore[misc]
        data["postfix"] = ", ".join(f"{k}={_value(v)}" for k, v in self.values.items())
        return data


class _LiveBar(_LazyPostfix, auto_tqdm):
    """The live bar."""


class PlainProgress(_LazyPostfix, text_tqdm):
    """The non-terminal form of a bar: one plain line at the start, at most every ``interval``
    seconds (tqdm's ``mininterval``) and at the end, written to ``stream`` (default stderr)."""

    monitor_interval = 0  # no tqdm monitor thread: lines come from updates only

    def __init__(
        self,
        iterable: Iterable | None = None,
        *,
        total: int | None = None,
        initial: int = 0,
        desc: str = "",
        stream: TextIO | None = None,
        interval: float | None = None,
        disable: bool = False,
    ) -> None:
        super().__init__(
            iterable,
            total=total,
            initial=initial,
            desc=desc,
            file=stream,
            mininterval=_interval() if interval is None else interval,
            miniters=0,  # every update checks the time
            smoothing=0,  # the rate is the average since the start
            leave=False,  # close() writes the last line itself, with no "\r" or blank line
            disable=disable,
        )

    @property
    def interval(self) -> float:
        return self.mininterval

    @interval.setter
    def interval(self, value: float) -> None:
        self.mininterval = value

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg is not None:  # tqdm clearing the bar: a line stays as it is
            return False
        self.fp.write(self.line() + "\n")
        self.fp.flush()
        return True

    def close(self) -> None:
        if not self.disable:
            self.display()
        super().close()

    def line(self) -> str:
        """``desc: n/total (p%), rate, eta, elapsed, key value, ...``."""
        n, total = self.n, self.total
        started = getattr(self, "start_t", None)  # tqdm sets it after the first line
        elapsed = 0.0 if started is None else self._time() - started
        parts = [f"{self.desc}: {n}" + (f"/{total} ({100 * n / total:.0f}%)" if total else "")]
        done = n - self.initial
        if done > 0 and elapsed > 0:
            rate = done / elapsed
            speed = f"{rate:.3g} it/s" if rate >= 1 else f"{1 / rate:.3g} s/it"
            eta = f", eta {_duration((total - n) / rate)}" if total else ""
            parts.append(f"{speed}{eta}, elapsed {_duration(elapsed)}")
        parts += [f"{k} {_value(v)}" for k, v in self.values.items()]
        return ", ".join(parts)


class StepEstimate(PlainProgress):
    """The plain form of a nested loop (a sampler's steps): silent while it is short; once it
    has run ``first`` seconds, one line with the rate and the time left of the loop (an
    estimate from its first steps), then one every ``interval`` seconds. No line at the start
    or the end: the outer loop's lines say those."""

    def __init__(self, iterable: Iterable | None = None, *, first: float, **kwargs: Any) -> None:
        self.every = _interval() if kwargs.get("interval") is None else kwargs["interval"]
        self.quiet = True  # until the first update after `first` seconds, and from close() on
        self.last_line: float | None = None  # when the last line was written
        kwargs["interval"] = first
        super().__init__(iterable, **kwargs)

    def update(self, n: int = 1, **postfix: Any) -> bool | None:
        self.quiet = False
        return super().update(n, **postfix)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg is not None:  # tqdm clearing the line: nothing to clear
            return False
        now = self._time()
        if self.quiet or self.n == 0:
            return True
        if self.last_line is not None and now - self.last_line < self.every:
            return True  # tqdm checks every `first` seconds; a line every `every` seconds
        self.last_line = now
        return super().display(msg, pos)

    def close(self) -> None:
        self.quiet = True
        super().close()


#: Seconds a nested loop in a file runs before its first line (:class:`StepEstimate`).
NESTED_FIRST = 5.0


def progress(
    iterable: Iterable | None = None,
    *,
    desc: str,
    enabled: bool = True,
    total: int | None = None,
    initial: int = 0,
    nested: bool = False,
    stream: TextIO | None = None,
) -> Any:
    """A progress display over ``iterable`` (or a manual one with ``total``/``update``).

    Args:
        enabled: ``False`` (other ranks, ``--progress false``) shows nothing.
        nested: an inner loop (a sampler's steps inside a batch loop): a transient bar on a
            terminal; in a file nothing while it is short, else a line with its time left
            after :data:`NESTED_FIRST` seconds and then every interval (:class:`StepEstimate`).
        stream: where it goes (default stderr); its kind decides bar or lines.

    Returns:
        A tqdm bar: live (:func:`live_output`), :class:`PlainProgress`, or a disabled one that
        shows nothing. All support iteration, ``update(n, **postfix)``, ``set_postfix`` and
        use as a context manager.
    """
    live = live_output(stream)
    if not enabled:
        return PlainProgress(iterable, total=total, disable=True)
    if nested and not live:
        first = min(NESTED_FIRST, max(_interval(), 1.0))
        return StepEstimate(iterable, first=first, total=total, desc=desc, stream=stream)
    if not live:
        return PlainProgress(iterable, total=total, initial=initial, desc=desc, stream=stream)
    return _LiveBar(
        iterable,
        total=total,
        initial=initial,
        desc=desc,
        leave=not nested,
        dynamic_ncols=True,
        file=stream,
    )
