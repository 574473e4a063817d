"""Quality during training (``--eval_decode_interval N``): decode a few validation sources with
the current EMA weights every N steps and log BLEU, ROUGE-L, exact match and examples.

Beyond the original, which shows only losses until a separate decode runs after training. Every
``N`` optimizer steps the first ``--eval_decode_samples`` sources of ``valid.jsonl`` are decoded
with a copy of the model holding the first EMA rate's weights, by the family's
:meth:`~diffuseq.families.base.Family.sample_tokens` (the decode job's
:class:`~diffuseq.decoding.job.Decoder`), with ``--eval_decode_sampler`` (default the family's fast
choice, :data:`FAST`), one candidate per source at a fixed seed. Rank ``r`` decodes sources
``r::world`` and rank 0 gathers, scores them as ``eval_seq2seq.py`` does (same cleaning, sentence
BLEU and ROUGE-L) and writes one ``metrics.jsonl`` record ``{"step", "seconds", "decode_bleu",
"decode_rouge_l", "decode_exact", "decode_seconds", "decode_sources", "decode_examples": [3 x
{source, reference, output}]}`` (numbers to TensorBoard/wandb too, the examples as text).

The training is untouched: the decode runs on the copy, in eval mode, inside
``torch.random.fork_rng`` (and with Python's and numpy's states restored), so a run with it
ends with bit-identical weights to a run without.
"""

from __future__ import annotations

import contextlib
import copy
import random
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from diffuseq.config import DecodeConfig, RunConfig
from diffuseq.config.decode import ResolvedDecode
from diffuseq.data.dataset import read_pairs
from diffuseq.decoding.job import Decoder
from diffuseq.decoding.text import EncodedInputs, texts_from_tokens
from diffuseq.errors import ConfigError
from diffuseq.evaluation import metrics
from diffuseq.evaluation.job import SpecialTokens, clean_example
from diffuseq.runtime import dist
from diffuseq.runtime.logger import MetricsWriter, get_logger
from diffuseq.sampling.table import SAMPLER_TABLE

__all__ = ["FAST", "EvalDecode", "build_eval_decode"]

#: The default (``auto``) sampler and step count of each family.
FAST = {"gaussian": ("dpm-solver++", 10), "discrete": ("rdm", 10), "ar": ("greedy", None)}
STEPS = 10  # of a sampler chosen by name that takes a step count
EXAMPLES = 3


def decode_settings(
    name: str, family: str, *, seed: int, batch_size: int, max_steps: int | None = None
) -> DecodeConfig:
    """The :class:`DecodeConfig` of ``--eval_decode_sampler name`` for a ``family`` model
    (``max_steps``: the process's T, which a step count may not exceed)."""
    if name == "auto":
        sampler, steps = FAST[family]
    else:
        sampler, steps = name, STEPS if SAMPLER_TABLE[name].takes_steps else None
    if steps is not None and max_steps is not None:
        steps = min(steps, max_steps)
    return DecodeConfig(sampler=sampler, steps=steps, seed=seed, batch_size=batch_size)


class EvalDecode:
    """The periodic decode of one training process (every rank holds one; rank 0 logs).

    Args (keyword-only):
        decoder: a :class:`Decoder` over a private copy of the model (its weights are replaced
            by the EMA weights before each decode).
        inputs: the encoded validation sources (all of them; each rank decodes its share).
        config: the resolved sampler settings.
        interval: decode when the step count is a multiple of it.
        writer: the run's metrics writer (disabled off rank 0).
    """

    def __init__(
        self,
        *,
        decoder: Decoder,
        inputs: EncodedInputs,
        config: ResolvedDecode,
        interval: int,
        writer: MetricsWriter,
    ) -> None:
        self.decoder, self.inputs, self.config = decoder, inputs, config
        self.interval, self.writer = interval, writer
        self.started = time.monotonic()
        self.latest: float | None = None  # the last decode_bleu (rank 0)
        specials = decoder.tokenizer.special_tokens
        self.tokens = SpecialTokens(**{k: specials[k] for k in ("sos", "eos", "sep", "pad")})

    def due(self, step: int) -> bool:
        return step > 0 and step % self.interval == 0

    def run(self, weights: Sequence[torch.Tensor], step: int) -> float | None:
        """Decode with ``weights`` (the model's parameters, in ``named_parameters`` order), log,
        and return ``decode_bleu`` on rank 0 (``None`` elsewhere). Every rank must call it."""
        start = time.perf_counter()
        with _isolated_rng(self.decoder.device):
            model = self.decoder.model
            with torch.no_grad():
                for target, source in zip(model.parameters(), weights, strict=True):
                    target.copy_(source)
            rank, world = dist.rank(), dist.world_size()
            rows = [(i, 0) for i in range(rank, len(self.inputs), world)]
            local = self.decoder.decode_rows(self.inputs, rows, self.config)
        gathered = sorted(row for part in dist.all_gather_object(local) for row in part)
        if not self.writer.enabled:
            return None
        refs = texts_from_tokens(
            self.decoder.tokenizer, self.inputs.input_ids, self.inputs.input_mask,
            self.inputs.input_ids,
        )  # fmt: skip
        examples = [
            clean_example({**refs[i], "recover": recover}, self.tokens)
            for i, _, recover in gathered
        ]
        hyps, targets = [e.recover for e in examples], [e.reference for e in examples]
        self.latest = float(np.mean(metrics.sentence_bleu_many(hyps, targets)))
        record = {
            "step": step,
            "seconds": round(time.monotonic() - self.started, 3),
            "decode_bleu": self.latest,
            "decode_rouge_l": float(np.mean(metrics.rouge_l_many(hyps, targets))),
            "decode_exact": float(np.mean([h == t for h, t in zip(hyps, targets)])),
            "decode_seconds": round(time.perf_counter() - start, 3),
            "decode_sources": len(examples),
        }
        shown = [
            {
                "source": _words(e.source),
                "reference": _words(e.reference),
                "output": _words(e.recover),
            }
            for e in examples[:EXAMPLES]
        ]
        self.writer.log_record(record, text={"decode_examples": shown})
        get_logger("trainer").info(
            "step %d: decode_bleu %.4f, decode_rouge_l %.4f, decode_exact %.3f (%d sources, "
            "%s, %.1f s); e.g. %r -> %r",
            step, record["decode_bleu"], record["decode_rouge_l"], record["decode_exact"],
            len(examples), self.config.sampler, record["decode_seconds"],
            shown[0]["source"] if shown else "", shown[0]["output"] if shown else "",
        )  # fmt: skip
        return self.latest


def _words(text: str) -> str:
    return " ".join(text.split())


@contextlib.contextmanager
def _isolated_rng(device: torch.device):
    """Torch (CPU and this CUDA device), Python and numpy random states as they were after."""
    devices = [device] if device.type == "cuda" else []
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def build_eval_decode(
    config: RunConfig,
    *,
    model: torch.nn.Module,
    process: Any,
    tokenizer,
    valid_path,
    device: torch.device,
    writer: MetricsWriter,
) -> EvalDecode | None:
    """The periodic decode of a run (``None`` when ``--eval_decode_interval`` is 0).

    Raises:
        ConfigError: the sampler does not decode this family, or its package is missing.
    """
    tr = config.train
    if tr.eval_decode_interval <= 0:
        return None
    family = config.model.family
    settings = decode_settings(
        tr.eval_decode_sampler, family, seed=tr.seed, batch_size=min(tr.eval_decode_samples, 64),
        max_steps=getattr(process, "num_timesteps", None) if family == "gaussian" else None,
    )  # fmt: skip
    pairs = read_pairs(valid_path)[: tr.eval_decode_samples]
    private = copy.deepcopy(model).eval().requires_grad_(False)
    decoder = Decoder(
        model=private,
        diffusion=process,
        tokenizer=tokenizer,
        seq_len=config.data.seq_len,
        device=device,
        family=family,
    )
    try:
        resolved = decoder.resolve(settings)
        SAMPLER_TABLE[resolved.sampler].load()  # a missing package fails now, not mid-run
    except ConfigError as err:
        raise ConfigError(f"--eval_decode_sampler {tr.eval_decode_sampler}: {err}") from None
    except ImportError as err:
        raise ConfigError(
            f"--eval_decode_sampler {resolved.sampler} needs a package that is not installed "
            f"({err}); pip install -e '.[decode]' or choose another sampler"
        ) from None
    get_logger("train").info(
        "decoding %d validation sources every %d steps with %s (%d steps)",
        len(pairs), tr.eval_decode_interval, resolved.sampler, resolved.steps,
    )  # fmt: skip
    return EvalDecode(
        decoder=decoder,
        inputs=decoder.encode(pairs),
        config=resolved,
        interval=tr.eval_decode_interval,
        writer=writer,
    )
