"""Python API for generation with a trained DiffuSeq model.

Example::

    from diffuseq import api

    gen = api.load("diffusion_models/<run>")            # run folder (newest EMA file) or a .pt file
    texts = gen.generate(["how old are you ?"], steps=10, sampler="dpm-solver++", num_samples=3, seed=101)
    # texts[i][k]: candidate k for source i, special tokens removed and cut at [SEP]
    raw = gen.generate_raw(["how old are you ?"])        # the decode files' records, special tokens kept

Results are the same as ``run_decode.py`` with the same seed and settings for the same
example index (noise is drawn per example, see :mod:`diffuseq.sampling.noise`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from diffuseq.decoding import Decoder, DecodeSettings, cut_at_sep
from diffuseq.errors import CheckpointError
from diffuseq.run_folder import open_run

__all__ = ["TextGenerator", "load"]


class TextGenerator:
    """A loaded checkpoint. Build it with :func:`load`.

    Attributes:
        run: the :class:`~diffuseq.run_folder.RunFolder`; checkpoint: the ``.pt`` file;
        decoder: the underlying :class:`~diffuseq.decoding.Decoder` (model, diffusion, tokenizer).
    """

    def __init__(self, *, run, checkpoint: Path, decoder: Decoder, dtype: str = "fp32") -> None:
        self.run, self.checkpoint, self.decoder, self.dtype = run, checkpoint, decoder, dtype

    def generate_raw(
        self,
        sources: Sequence[str],
        *,
        references: Sequence[str] | None = None,
        steps: int | None = None,
        sampler: str = "auto",
        num_samples: int = 1,
        seed: int = 101,
        top_p: float | None = None,
        clamp_step: int = 0,
        batch_size: int = 50,
        ddim_adjacent: bool = False,
        dpm_v2_variant: bool = False,
        progress: bool = False,
    ) -> list[list[dict[str, str]]]:
        """``result[i][k]`` = ``{"recover", "reference", "source"}`` as in the decode files.

        Args:
            sources: source texts; references: optional gold targets (default empty).
            steps: sampling steps (default T); sampler: ``auto``/``ancestral``/``ddim``/``dpm-solver++``.
            num_samples: candidates per source; candidate ``k`` uses seed ``seed + k``.
            Others: as the ``run_decode.py`` flags of the same names.
        """
        references = [""] * len(sources) if references is None else list(references)
        if len(references) != len(sources):
            raise ValueError(f"{len(sources)} sources but {len(references)} references")
        settings = DecodeSettings(
            sampler=sampler,
            steps=steps,
            clamp_step=clamp_step,
            top_p=top_p,
            seed=seed,
            num_samples=num_samples,
            batch_size=batch_size,
            dtype=self.dtype,
            ddim_adjacent=ddim_adjacent,
            dpm_v2_variant=dpm_v2_variant,
        )
        inputs = self.decoder.encode(list(zip(sources, references)))
        return self.decoder.generate(inputs, settings, progress=progress)

    def generate(self, sources: Sequence[str], **kwargs) -> list[list[str]]:
        """Cleaned candidates ``result[i][k]``: cut at the first [SEP]/eos, special tokens removed.

        Keyword arguments as :meth:`generate_raw`.
        """
        specials = self.decoder.tokenizer.special_tokens
        return [
            [cut_at_sep(r["recover"], specials) for r in per_source]
            for per_source in self.generate_raw(sources, **kwargs)
        ]


def load(
    path: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: str = "fp32",
    pattern: str = "ema",
) -> TextGenerator:
    """Load a run folder (its newest ``{pattern}*.pt``) or one checkpoint file.

    Args:
        path: ``diffusion_models/<run>`` (ours or the original's) or ``…/<run>/ema_0.9999_050000.pt``.
        device: default ``cuda`` if available, else ``cpu``.
        dtype: ``fp32``, ``bf16`` or ``fp16`` autocast for the network.
    """
    path = Path(path)
    if path.is_file():
        run, checkpoint = open_run(path.parent), path
    elif path.is_dir():
        run = open_run(path)
        checkpoint = run.select_checkpoints(pattern, "latest")[0]
    else:
        raise CheckpointError(f"{path} is neither a run folder nor a checkpoint file")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    DecodeSettings(dtype=dtype).check()
    decoder = Decoder.from_checkpoint(run, checkpoint, device=device)
    return TextGenerator(run=run, checkpoint=checkpoint, decoder=decoder, dtype=dtype)
