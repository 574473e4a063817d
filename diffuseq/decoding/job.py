"""The decode job: sample targets for a list of sources and write the original's output files.

Reimplements `scripts/run_decode.py` + `sample_seq2seq.py` (+ v2's `sample_seq2seq_dpmSolver.py`)
of the original (docs/original.md §2.4–2.6, §5.11–5.13, §8):

1. load a checkpoint of a run folder (model with the tied-weight rule, diffusion, tokenizer);
2. shard the input examples across ranks with a strided slice (``rank::world_size``);
3. per batch of ``(example, candidate)`` rows: ``x̄_0 = EMB(ids)``, ``x_T = where(m==0, x̄_0, z)``,
   run a sampler (:mod:`diffuseq.sampling`), ``tokens = top-1 of get_logits(x_0)`` in fp32;
4. text (docs/original.md §5.13): ``recover = decode(tokens[len_x:])``, ``reference = decode(ids[len_x:])``,
   ``source = decode(ids[:len_x])`` with ``len_x = L − Σ mask`` (special tokens kept);
5. ``all_gather_object`` the texts; rank 0 writes one JSON-lines file per candidate seed,
   lines in input order, keys ``recover, reference, source`` (``json.dumps`` defaults).

Every row draws its noise from its own generator (:class:`~diffuseq.sampling.noise.NoiseSource`), so the
output does not depend on the batch size, the number of processes or ``num_samples``.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from diffuseq.config.decode import DecodeConfig, ResolvedDecode
from diffuseq.decoding.manifest import write_outputs
from diffuseq.decoding.text import EncodedInputs, cut_at_sep, read_input_file, texts_from_tokens
from diffuseq.errors import CheckpointError, ConfigError
from diffuseq.runtime import dist
from diffuseq.runtime.logger import get_logger
from diffuseq.runtime.progress import progress as progress_display
from diffuseq.sampling.inputs import torch_dtype
from diffuseq.sampling.run import RowBatch
from diffuseq.store.safe_io import contained, path_component

__all__ = [
    "Decoder",
    "EncodedInputs",
    "cut_at_sep",
    "decode_to_files",
    "output_file_name",
    "provenance",
    "read_input_file",
    "samples_dir_name",
    "texts_from_tokens",
    "torch_dtype",
]

log = get_logger("decode")


def samples_dir_name(checkpoint_name: str, config: ResolvedDecode, *, input_label: str = "") -> str:
    """``<ckpt>.samples`` for full-step ancestral sampling (the original's folder), else
    ``<ckpt>.samples-<sampler>-<N>steps``; ``input_label`` (non-test split, ad-hoc input) is
    appended as ``-<label>``, so every folder holds the seeds of one configuration only;
    ``--length_beam K > 1`` adds ``-lenbeam<K>``."""
    name = f"{checkpoint_name}.samples"
    if config.sampler != "ancestral":
        name += f"-{config.sampler}-{config.steps}steps"
    if config.length_beam > 1:
        name += f"-lenbeam{config.length_beam}"
    return name + (f"-{input_label}" if input_label else "")


def output_file_name(seed: int, clamp_step: int, note: str | None = None) -> str:
    """``seed{S}_step{clamp}.json`` (``step`` is the clamp step, as the original); v2's
    ``--note`` adds ``_{note}`` (ConfigError if it cannot be part of a file name)."""
    if note:
        path_component(note, "--note", purpose="the output file name")
    return f"seed{seed}_step{clamp_step}" + (f"_{note}" if note else "") + ".json"


# ----------------------------------------------------------------------------------- decoder


class Decoder:
    """A loaded model ready to decode: model (eval, frozen, on ``device``), its family's process
    (``diffusion``), tokenizer. Batches are decoded by the family
    (:meth:`~diffuseq.families.base.Family.sample_tokens`)."""

    def __init__(
        self,
        *,
        model,
        diffusion,
        tokenizer,
        seq_len: int,
        device: torch.device | str = "cpu",
        family: str = "gaussian",
    ) -> None:
        from diffuseq.families import get_family

        self.model, self.diffusion, self.tokenizer = model, diffusion, tokenizer
        self.seq_len, self.device = seq_len, torch.device(device)
        self.family = get_family(family)
        self.compiled = False  # see compile(): the last batch is then padded to full size

    @classmethod
    def from_checkpoint(
        cls, run, checkpoint: str | Path, *, device: torch.device | str = "cpu"
    ) -> Decoder:
        """Build from a :class:`~diffuseq.store.run_folder.RunFolder` and one of its ``.pt`` files."""
        from diffuseq.store.checkpoint import is_train_state, load_state_file

        tokenizer = run.tokenizer  # checked before the file is read
        state = load_state_file(checkpoint)
        if is_train_state(state):
            raise CheckpointError(
                f"{checkpoint} is a full training state; decode an ema_*.pt file "
                "(--pattern ema) or pass one with --model_dir path/to/ema_<rate>_<step>.pt"
            )
        return cls.from_state_dict(run.config, tokenizer, state, where=run.path, device=device)

    @classmethod
    def from_state_dict(
        cls,
        config,
        tokenizer,
        state: Mapping[str, torch.Tensor],
        *,
        where: str | Path,
        device: torch.device | str = "cpu",
        bert_config=None,
    ) -> Decoder:
        """Build from a run's :class:`~diffuseq.config.RunConfig`, its tokenizer and a state
        dict of model weights (the tied-weight rule applies); ``where`` names the source in
        messages; ``bert_config`` replaces the encoder config built from ``config_name``."""
        from diffuseq.families import get_family

        family = get_family(config.model.family)
        vocab_size = config.model.vocab_size or tokenizer.vocab_size
        if vocab_size != tokenizer.vocab_size:
            raise ConfigError(
                f"{where}: the run's vocab_size is {vocab_size} but its tokenizer has "
                f"{tokenizer.vocab_size} tokens; the saved tokenizer does not belong to this run"
            )
        model = family.build_model(
            config, vocab_size=vocab_size, encoder_config=bert_config, tokenizer=tokenizer
        )
        model.load_state_dict(state)
        _warn_if_not_finite(state, where)
        model.eval().requires_grad_(False).to(device)
        process = family.build_process(config)
        family.sync_process(process, model)  # e.g. the schedule the weights were trained with
        return cls(
            model=model,
            diffusion=process,
            tokenizer=tokenizer,
            seq_len=config.data.seq_len,
            device=device,
            family=family.name,
        )

    def resolve(self, config: DecodeConfig | ResolvedDecode) -> ResolvedDecode:
        """``config`` resolved for this model (the family decides); a resolved one as is."""
        if isinstance(config, ResolvedDecode):
            return config
        return self.family.resolve_decode(config, self.diffusion)

    def compile(self) -> bool:
        """``torch.compile`` the network for decoding (``--compile``), in place; ``False``
        (eager, with a warning) where compiling is not available here or the family's
        decoding changes shapes at every step (``ar``: its target grows by one token a step).

        * ``mode="default"`` (fused element-wise kernels around the matrix products). Not
          ``"reduce-overhead"``: CUDA graphs hand out the same output buffers at the next
          replay, but the multistep solvers (DPM-Solver++ keeps earlier model outputs) and
          self-conditioning (the previous x̂_0 is the next call's input) keep outputs across
          calls; not ``"max-autotune"``: minutes of start-up for a few percent.
        * ``dynamic=False``: every network call of a batch has the shape ``[batch_size, L, h]``,
          and :meth:`decode_rows` pads a smaller last batch to that size (rows are independent:
          each draws from its own stream, attention stays within a row), so one static graph
          serves the whole run, compiled once, with no recompilation for the last batch.
        Only the network's ``forward`` is compiled (rounding and read-out stay eager), and the
        module keeps its state-dict keys.
        """
        from diffuseq.runtime.perf import compile_model

        if not self.family.fixed_decode_shapes:
            log.warning("--compile: not used for decoding the %s family", self.family.name)
            return False
        self.compiled = compile_model(self.model, device=self.device, mode="default")
        return self.compiled

    def encode(self, pairs: Sequence[tuple[str, str]]) -> EncodedInputs:
        return EncodedInputs.from_pairs(pairs, self.tokenizer, seq_len=self.seq_len)

    @torch.no_grad()
    def sample_tokens(
        self, rows: RowBatch, config: ResolvedDecode, *, progress: bool = False
    ) -> torch.Tensor:
        """Sample one batch of rows and return their tokens ``[B, L]`` (CPU).

        Row ``r`` draws from the generator of ``(seeds[r], indices[r])``: first ``z`` for
        ``x_T``, then the sampler's per-step draws.
        """
        tokens = self.family.sample_tokens(
            self.model, self.diffusion, rows.to(self.device), config=config, progress=progress
        )
        return tokens.cpu()

    def decode_rows(
        self,
        inputs: EncodedInputs,
        rows: Sequence[tuple[int, int]],
        config: ResolvedDecode,
        *,
        progress: bool = False,
    ) -> list[tuple[int, int, str]]:
        """``(example index, candidate k, recover)`` for each row, in batches of ``batch_size``."""
        out: list[tuple[int, int, str]] = []
        batches = range(0, len(rows), config.batch_size)
        for start in progress_display(batches, desc="batches", enabled=progress):
            batch = rows[start : start + config.batch_size]
            index = torch.tensor([i for i, _ in batch], dtype=torch.long)
            ids, mask = inputs.input_ids[index], inputs.input_mask[index]
            seeds, indices = [config.seed + k for _, k in batch], [i for i, _ in batch]
            batch_rows = RowBatch(ids, mask, seeds, indices)
            if self.compiled and start > 0:  # keep the compiled shape (see compile())
                batch_rows = _padded(batch_rows, config.batch_size)
            tokens = self.sample_tokens(batch_rows, config, progress=progress)[: len(batch)]
            texts = texts_from_tokens(self.tokenizer, ids, mask, tokens)
            out.extend((i, k, text["recover"]) for (i, k), text in zip(batch, texts))
        return out

    def generate(
        self,
        inputs: EncodedInputs,
        config: DecodeConfig | ResolvedDecode,
        *,
        progress: bool = False,
    ) -> list[list[dict[str, str]]]:
        """All candidates of all examples in this process: ``result[i][k]`` = record of example
        ``i``, candidate ``k`` (keys ``recover, reference, source``); ``config`` is resolved
        here unless it already is."""
        config = self.resolve(config)
        rows = [(i, k) for i in range(len(inputs)) for k in range(config.num_samples)]
        return _assemble(
            inputs,
            self.tokenizer,
            self.decode_rows(inputs, rows, config, progress=progress),
            config.num_samples,
        )


def _padded(rows: RowBatch, size: int) -> RowBatch:
    """``rows`` with its last row repeated up to ``size`` rows (the extra outputs are dropped)."""
    pad = size - len(rows.seeds)
    if pad <= 0:
        return rows
    ids, mask = (torch.cat([t, t[-1:].expand(pad, -1)]) for t in (rows.input_ids, rows.input_mask))
    return RowBatch(
        ids, mask, [*rows.seeds, *rows.seeds[-1:] * pad], [*rows.indices, *rows.indices[-1:] * pad]
    )


def _assemble(
    inputs: EncodedInputs, tokenizer, rows: Sequence[tuple[int, int, str]], num_samples: int
) -> list[list[dict[str, str]]]:
    refs = texts_from_tokens(tokenizer, inputs.input_ids, inputs.input_mask, inputs.input_ids)
    result: list[list[dict[str, str]]] = [
        [{} for _ in range(num_samples)] for _ in range(len(inputs))
    ]
    for i, k, recover in rows:
        result[i][k] = {
            "recover": recover,
            "reference": refs[i]["reference"],
            "source": refs[i]["source"],
        }
    return result


def provenance(model: torch.nn.Module, inputs: EncodedInputs) -> dict[str, Any]:
    """What identifies a decode job in its manifest (:mod:`diffuseq.decoding.decode_sets`): a
    fresh ``job`` id and time, and fingerprints of the model's weights and of the inputs, so
    that files of other checkpoints or inputs in the same folder are told apart."""
    weights = hashlib.blake2b(digest_size=8)
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().cpu().contiguous().reshape(-1)
        weights.update(f"{name}:{data.dtype}:{tuple(tensor.shape)};".encode())
        weights.update(data.view(torch.uint8).numpy().tobytes())
    source = hashlib.blake2b(digest_size=8)
    for tensor in (inputs.input_ids, inputs.input_mask):
        source.update(tensor.to(torch.int64).contiguous().numpy().tobytes())
    return {
        "job": uuid.uuid4().hex[:12],
        "decoded_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "weights": weights.hexdigest(),
        "inputs": {"count": len(inputs), "fingerprint": source.hexdigest()},
    }


def decode_to_files(
    decoder: Decoder,
    inputs: EncodedInputs,
    config: DecodeConfig | ResolvedDecode,
    *,
    out_folder: str | Path,
    note: str | None = None,
    append: bool = False,
    clean: bool = False,
    info: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Decode ``inputs`` on every rank (strided shard) and let rank 0 write one file per seed
    (atomically, with the folder's manifest: :mod:`diffuseq.decoding.manifest`).

    Args:
        config: what to sample (resolved for the decoder's model here unless it already is).
        out_folder: ``<out_dir>/<run>/<ckpt>.samples…``; created by rank 0.
        note: v2's file-name suffix. append: append instead of overwrite (the original appends).
        clean: ``--cut_at_sep`` on all three strings.
        info: more JSON values recorded in the manifest (e.g. the checkpoint decoded).

    Returns:
        The written paths (on every rank).
    """
    config = decoder.resolve(config)
    rank, world = dist.rank(), dist.world_size()
    rows = [(i, k) for i in range(rank, len(inputs), world) for k in range(config.num_samples)]
    folder = Path(out_folder)
    paths = [  # checked before any work
        contained(folder, output_file_name(config.seed + k, config.clamp_step, note), "output")
        for k in range(config.num_samples)
    ]
    start = time.perf_counter()
    local = decoder.decode_rows(inputs, rows, config, progress=rank == 0)
    gathered = [row for part in dist.all_gather_object(local) for row in part]
    if rank == 0:
        records = _assemble(inputs, decoder.tokenizer, gathered, config.num_samples)
        specials = decoder.tokenizer.special_tokens
        if clean:
            records = [
                [{key: cut_at_sep(text, specials) for key, text in r.items()} for r in candidates]
                for candidates in records
            ]
        outputs = {path.name: [json.dumps(r[k]) for r in records] for k, path in enumerate(paths)}
        described = {
            **asdict(config),
            "note": note,
            "cut_at_sep": clean,
            **provenance(decoder.model, inputs),
            **(info or {}),
        }
        try:
            write_outputs(
                folder, outputs, settings=described, special_tokens=specials, append=append
            )
        except OSError as err:
            raise ConfigError(f"cannot write the decode outputs to {folder}: {err}") from None
        log.info(
            "decoded %d example(s) x %d candidate(s) in %.1f s -> %s",
            len(inputs),
            config.num_samples,
            time.perf_counter() - start,
            folder,
        )
    dist.barrier()
    return paths


def _warn_if_not_finite(state: Mapping[str, torch.Tensor], where: str | Path) -> None:
    """Warn when weights hold NaN or infinite values (a diverged run): decoding goes on, but
    its outputs mean nothing."""
    bad = [
        key
        for key, value in state.items()
        if isinstance(value, torch.Tensor)
        and value.is_floating_point()
        and not bool(torch.isfinite(value).all())
    ]
    if bad:
        log.warning(
            "%s: %d weight tensor(s) hold NaN or infinite values (%s%s): the run diverged and "
            "the outputs will mean nothing; decode an earlier checkpoint",
            where,
            len(bad),
            ", ".join(bad[:3]),
            ", ..." if len(bad) > 3 else "",
        )
