"""Progress output that suits where it goes: a live tqdm bar on a terminal (or in a notebook),
periodic plain lines when the stream is a file or a pipe, or under CI (``$CI`` set).

A bar redraws itself with carriage returns and escape codes, which turn a log file into
hundreds of kilobytes of noise; a plain line (``training: 120/1000 (12%) 3.1 it/s, eta 4m43s,
loss 0.1234``) every ``$DIFFUSEQ_PROGRESS_INTERVAL`` seconds (default 30) reads well in a file.
Training (:mod:`diffuseq.training.trainer`), decoding (:mod:`diffuseq.decoding.job`) and the samplers'
inner loops (:mod:`diffuseq.sampling.common`) all choose through :func:`progress`.

Postfix values may be callables (e.g. ``loss=lambda: loss_tensor``): they are evaluated only
when a line or a redraw is due, so a bar can show the latest loss without a device
synchronisation per step.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO

__all__ = ["PlainProgress", "live_output", "progress"]

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


class PlainProgress:
    """The non-terminal form of a bar: one plain line at the start, every ``interval`` seconds
    and at the end, written to ``stream``; the subset of the tqdm interface the toolkit uses."""

    def __init__(
        self,
        iterable: Iterable | None = None,
        *,
        total: int | None = None,
        initial: int = 0,
        desc: str = "",
        stream: TextIO | None = None,
        interval: float | None = None,
    ) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n, self.desc = total, initial, desc
        self.stream = stream
        self.interval = _interval() if interval is None else interval
        self._start_n, self._start = initial, time.monotonic()
        self._last_line = self._start
        self._postfix: dict[str, Any] = {}
        self._closed = False
        self._write()

    def __iter__(self) -> Iterator:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_postfix(self, refresh: bool = False, **values: Any) -> None:
        self._postfix.update(values)

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.n += n
        self._postfix.update(postfix)
        if time.monotonic() - self._last_line >= self.interval:
            self._write()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._write()

    def _write(self) -> None:
        now = time.monotonic()
        self._last_line = now
        parts = [f"{self.desc}: {self.n}" + (f"/{self.total}" if self.total else "")]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        done, elapsed = self.n - self._start_n, now - self._start
        if done > 0 and elapsed > 0:
            rate = done / elapsed
            speed = f"{rate:.3g} it/s" if rate >= 1 else f"{1 / rate:.3g} s/it"
            eta = f", eta {_duration((self.total - self.n) / rate)}" if self.total else ""
            parts.append(f"{speed}{eta}, elapsed {_duration(elapsed)}")
        parts += [f"{k} {_value(v)}" for k, v in self._postfix.items()]
        stream = sys.stderr if self.stream is None else self.stream
        stream.write(", ".join(parts) + "\n")
        stream.flush()


class _LiveBar:
    """A tqdm bar whose postfix values may be callables, evaluated only on a redraw."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar
        self._postfix: dict[str, Any] = {}
        self._shown = 0.0

    def __iter__(self) -> Iterator:
        return iter(self.bar)

    def __enter__(self) -> _LiveBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self._refresh_postfix(force=True)
        self.bar.close()

    def set_postfix(self, refresh: bool = False, **values: Any) -> None:
        self._postfix.update(values)
        self._refresh_postfix(force=refresh)

    def update(self, n: int = 1, **postfix: Any) -> None:
        self._postfix.update(postfix)
        self._refresh_postfix()
        self.bar.update(n)

    def close(self) -> None:
        self.__exit__()

    def _refresh_postfix(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._postfix and (force or now - self._shown >= max(self.bar.mininterval, 0.5)):
            self._shown = now
            values = {k: _value(v) for k, v in self._postfix.items()}
            self.bar.set_postfix(values, refresh=False)


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
            terminal, nothing in a file (the outer loop's lines say enough).
        stream: where it goes (default stderr); its kind decides bar or lines.

    Returns:
        A tqdm bar (``live_output``), a :class:`PlainProgress`, or ``iterable`` itself / a
        silent :class:`PlainProgress`-like object when nothing is shown. All support iteration,
        ``update(n, **postfix)``, ``set_postfix`` and use as a context manager.
    """
    live = live_output(stream)
    if not enabled or (nested and not live):
        return _Silent(iterable)
    if not live:
        return PlainProgress(iterable, total=total, initial=initial, desc=desc, stream=stream)
    from tqdm.auto import tqdm

    bar = tqdm(
        iterable,
        total=total,
        initial=initial,
        desc=desc,
        leave=not nested,
        dynamic_ncols=True,
        file=stream,
    )
    return bar if iterable is not None else _LiveBar(bar)


class _Silent:
    """Shows nothing; iterates ``iterable`` unchanged."""

    def __init__(self, iterable: Iterable | None) -> None:
        self.iterable = iterable

    def __iter__(self) -> Iterator:
        return iter(self.iterable or ())

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, n: int = 1, **postfix: Callable | Any) -> None:
        pass

    def set_postfix(self, refresh: bool = False, **values: Any) -> None:
        pass

    def close(self) -> None:
        pass
