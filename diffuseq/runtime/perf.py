"""Small performance helpers shared by the CLIs and the benchmarks.

Pure functions, no import-time side effects: CPU feature detection, torch thread selection,
peak resident memory, and ``torch.compile`` of a network with a clean fallback
(:func:`compile_model`, behind ``--compile`` of training and decoding). Nothing here changes a
number the model computes (except compilation, whose fused kernels agree with eager within
fp32 rounding).
"""

from __future__ import annotations

import functools
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
    "compile_model",
    "compile_unavailable",
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
    """:func:`compile_model` of ``module`` on its parameters' device when ``enabled``; returns
    it (eager, with a warning, where compilation is unavailable)."""
    if enabled:
        device = next(module.parameters()).device
        compile_model(module, device=device, what="benchmark --compile", **compile_kwargs)
    return module


def _probe(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(x * 2.0 + 1.0)  # one fused pointwise kernel


@functools.cache
def compile_unavailable(device_type: str) -> str | None:
    """Why ``torch.compile`` cannot generate code for ``device_type`` here (``None``: it can).

    ``torch.compile`` is lazy: a missing C++ compiler (CPU), a missing Triton (CUDA) or an
    unsupported Python only fail at the first call of the compiled network, in the middle of
    a run. This compiles and runs a one-kernel function once per process and device type
    instead, so that the caller can fall back to eager before any work (cached: ~1 s with
    Inductor's on-disk cache warm).
    """
    if not hasattr(torch.nn.Module, "compile"):
        return f"torch {torch.__version__} has no nn.Module.compile (torch >= 2.2 has)"
    try:
        x = torch.linspace(-1.0, 1.0, 8, device=device_type)
        got = torch.compile(_probe, dynamic=False)(x)
        if not torch.allclose(got, _probe(x), atol=1e-5):
            return "a compiled test kernel computed wrong numbers"
    except Exception as err:  # noqa: BLE001 (whatever the backend raises, fall back)
        text = str(err).strip().splitlines()
        return f"{type(err).__name__}: {text[0] if text else 'no message'}"
    return None


def compile_model(
    module: torch.nn.Module,
    *,
    device: torch.device | str,
    what: str = "--compile",
    mode: str = "default",
    dynamic: bool | None = False,
) -> bool:
    """``torch.compile`` ``module`` in place (``nn.Module.compile``); ``False``, with a warning
    on the ``diffuseq`` logger, where :func:`compile_unavailable` says it cannot run.

    In place, the module keeps its object, parameter names and state-dict keys (no
    ``_orig_mod.`` prefix): optimizers, EMA copies and checkpoints see the same module either
    way, so a compiled run resumes from an eager one's state and vice versa. ``mode`` and
    ``dynamic`` go to ``torch.compile``; callers justify theirs (training: the trainer,
    decoding: :meth:`diffuseq.decoding.job.Decoder.compile`).
    """
    from diffuseq.runtime.logger import get_logger

    reason = compile_unavailable(torch.device(device).type)
    if reason is not None:
        get_logger("perf").warning(
            "%s: torch.compile is not available here (%s); running eager", what, reason
        )
        return False
    module.compile(mode=mode, dynamic=dynamic)
    return True
