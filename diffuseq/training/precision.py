"""How a training run computes: autocast dtype, TF32 matmuls and ``torch.compile`` of the
network (``--use_fp16`` / ``--bf16``, ``--tf32``, ``--compile``). Used by the
:class:`~diffuseq.training.trainer.Trainer`; none of it changes the saved state's layout.

* fp16 autocast goes with a ``torch.amp.GradScaler`` (the original v2's ``--use_fp16``); the
  trainer unscales the gradients before clipping them. bf16 needs no scaler.
* TF32 (``--tf32``, CUDA only, opt-in): fp32 matmuls and convolutions on Ampere and later GPUs
  run on TF32 tensor cores (10-bit mantissa inputs, fp32 accumulation), several times faster
  at about 1e-3 relative precision. It is a process-wide torch setting; it is only ever turned
  on here, never off, so a caller's own choice stands when ``--tf32`` is not given.
* ``--compile``: :func:`compile_for_training`.
"""

from __future__ import annotations

import torch

from diffuseq.config import TrainConfig
from diffuseq.errors import ConfigError
from diffuseq.runtime.logger import get_logger
from diffuseq.runtime.perf import compile_model

__all__ = ["autocast_dtype", "compile_for_training", "enable_tf32"]


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--use_fp16`` / ``--bf16`` on ``device`` (``None``: fp32).

    Raises:
        ConfigError: fp16 on CPU, or bf16 on a GPU without bf16 support.
    """
    if config.use_fp16:
        if device.type != "cuda":
            raise ConfigError(
                "--use_fp16 needs a CUDA GPU (fp16 autocast with a GradScaler); on CPU use --bf16 "
                "or train in fp32"
            )
        return torch.float16
    if config.bf16:
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("--bf16: this GPU does not support bfloat16; use --use_fp16 instead")
        return torch.bfloat16
    return None


def enable_tf32(device: torch.device) -> bool:
    """Let CUDA fp32 matmuls and cuDNN convolutions use TF32 (``--tf32``); ``False`` (with a
    log line) off CUDA, where there is no TF32."""
    if device.type != "cuda":
        get_logger("train").info("--tf32 has no effect on %s (TF32 is a CUDA mode)", device)
        return False
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9
        matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"
    else:
        matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return True


def compile_for_training(network: torch.nn.Module, device: torch.device) -> bool:
    """``torch.compile`` the network a training step calls (``--compile``), in place.

    ``network`` is what the step calls: the DDP wrapper when there is one. The PyTorch DDP
    notes say to wrap in DDP *before* compiling, so that Dynamo's DDPOptimizer splits the
    graph at the gradient buckets and the all-reduces still overlap the backward. The
    unwrapped module (its state dict, ``get_embeds`` / ``get_logits`` of the loss, the
    self-conditioning's first no-grad pass under DDP, validation) stays eager and keeps its
    keys. Single-process, ``network`` is the module itself, and both passes are compiled.

    Settings:

    * ``mode="default"``: Inductor fuses the element-wise work around the matrix products
      (GELU, dropout, LayerNorm, residual adds, the attention heads' layout copies: a quarter
      of the profiled fp32 CPU step, bench/RESULTS.md), which is what there is to gain in a
      compute-bound BERT step. Not ``"reduce-overhead"``: CUDA graphs pay off for
      launch-bound steps (small models), keep a static memory pool per shape and sit badly with
      DDP's gradient hooks and ``no_sync``; not ``"max-autotune"``: it benchmarks matmul
      configurations at start-up (many minutes for a 12-layer forward and backward) for a few
      percent on shapes cuBLAS / oneDNN already serve well.
    * ``dynamic=False``: a training micro-batch always has the same shape (``--microbatch``
      divides ``--bsz``, ``--seq_len`` is fixed), and static shapes give the best kernels. The
      one other shape, the smaller last batch of an epoch, is compiled once more when it comes
      (no-grad validation and the self-conditioning pass are graphs of their own too).

    Returns:
        whether the network was compiled (``False``: eager, with a warning, where
        ``torch.compile`` cannot run here, e.g. no C++ compiler for the CPU backend).
    """
    compiled = compile_model(network, device=device, what="--compile", mode="default")
    if compiled:
        get_logger("train").info(
            "--compile: the first steps include compiling the network (a minute or more)"
        )
    return compiled
