"""How one training invocation runs (:class:`RuntimeOptions`): not part of the run's config.

The device, the wall-clock budget, how many training states to keep, the progress bar, the
model-folder export and the check-only mode change neither the numbers nor what the run folder
means, so they are not saved with the run. The training command line generates its runtime
flags from these fields (:mod:`diffuseq.cli.train`); the Python API
(:func:`diffuseq.training.train`) takes them as keyword arguments. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffuseq.config.fields import FlagConfig, choice_checks, opt, raise_first

__all__ = ["DEVICES", "RuntimeOptions"]

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class RuntimeOptions(FlagConfig):
    """How this invocation runs; not part of the run's configuration."""

    device: str = opt(
        "auto", "where to train: auto (CUDA if available), cpu or cuda", choices=DEVICES
    )
    max_minutes: float = opt(
        0.0,
        "wall-clock budget in minutes: when spent, save a checkpoint and stop cleanly "
        "(0 = no budget)",
    )
    keep_states: int = opt(
        2,
        "how many full training states (state_*.pt) to keep; 0 keeps all; EMA files are "
        "never deleted",
    )
    progress: bool = opt(True, "show a progress bar on rank 0")
    export_model: bool = opt(
        True,
        "when training finishes, write the newest EMA checkpoint as a Hugging Face model folder "
        "RUN/hf/<checkpoint>/ (model.safetensors, config.json, tokenizer, model card)",
    )
    check_args: bool = opt(
        False,
        "only check the flags, the preset, the data folder and what --resume_checkpoint "
        "continues, then exit (0: a run would start); scripts/train.sh does this once before "
        "starting several processes",
    )

    def validate(self) -> RuntimeOptions:
        """Reject values no run can use; the messages name the flags."""
        raise_first(
            [
                *choice_checks(self),
                (
                    self.keep_states >= 0,
                    f"--keep_states must be 0 (keep all) or positive, got {self.keep_states}",
                ),
                (
                    self.max_minutes >= 0,
                    f"--max_minutes must be 0 (no budget) or positive, got {self.max_minutes}",
                ),
            ]
        )
        return self
