"""Small performance helpers shared by the CLIs and the benchmarks.

Pure functions, no import-time side effects: CPU feature detection, torch thread selection,
peak resident memory, and an opt-in ``torch.compile`` wrapper. Nothing here changes a number
the model computes (except :func:`maybe_compile`, whose compiled kernels agree with eager
within fp32 rounding).
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Callable

import torch

__all__ = [
    "cpu_flags",
    "cpu_has_bf16",
    "physical_cores",
    "set_threads",
    "peak_rss_bytes",
    "maybe_compile",
]


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of the first core (``/proc/cpuinfo``; empty off Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 dot products (``avx512_bf16`` or ``amx_bf16``).

    Without them bf16 matmuls are emulated and usually slower than fp32.
    """
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def physical_cores() -> int:
    """Cores this process may run on (affinity-aware), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def set_threads(num_threads: int | None = None) -> int:
    """Set torch's intra-op threads (``None`` or ``<= 0``: one per available core).

    One intra-op thread per physical core is what wins for the BERT-sized matmuls of this
    project (see ``bench/RESULTS.md``); more threads than cores only adds contention.

    Returns:
        the number of threads now in use.
    """
    n = num_threads if num_threads and num_threads > 0 else physical_cores()
    torch.set_num_threads(n)
    return torch.get_num_threads()


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far, in bytes (``ru_maxrss``)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB


def device_clock(device: torch.device) -> Callable[[], float]:
    """``time.perf_counter`` that first waits for the device's queued kernels (CUDA runs
    asynchronously), so that differences of its readings time whole operations."""
    if device.type != "cuda":
        return time.perf_counter

    def clock() -> float:
        torch.cuda.synchronize(device)
        return time.perf_counter()

    return clock


def maybe_compile(module: torch.nn.Module, enabled: bool, **compile_kwargs) -> torch.nn.Module:
    """Compile ``module`` in place with ``torch.compile`` when ``enabled``; returns it.

    ``nn.Module.compile`` keeps the module object, its parameter names and its state-dict keys,
    so optimizers, EMA and checkpoints see the same module either way.
    """
    if enabled:
        module.compile(**compile_kwargs)
    return module
