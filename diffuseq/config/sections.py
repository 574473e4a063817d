"""The sections of a training run's configuration, one frozen dataclass per concern.

:class:`ModelConfig` (the denoiser), :class:`DiffusionConfig` (the forward process, the loss and
the timestep distribution), :class:`DataConfig` (dataset and tokenizer) and
:class:`TrainConfig` (optimisation, checkpoints, logging), grouped in
:class:`~diffuseq.config.run.RunConfig` under the names of :data:`SECTIONS`.

* Each field carries its help text and, where the original used another name on the
  command line, the original flag (``--bsz`` for ``batch_size``, ``--diff_steps`` for
  ``diffusion_steps``). Flags are generated from the fields (:mod:`diffuseq.cli.flags`).
* Defaults are those of the original `run_train.py` wrapper, which is what users launch
  (docs/original.md §2.2).
* ``recipe=True`` marks the fields a model card lists in its recipe table, ``in_weights`` the
  architecture values a checkpoint's shapes reveal (:mod:`diffuseq.store.model_card`,
  :mod:`diffuseq.store.checkpoint_format` read both from here).
"""

from __future__ import annotations

from dataclasses import dataclass

from diffuseq.config.discrete import DiscreteConfig
from diffuseq.config.fields import opt

__all__ = ["SECTIONS", "DataConfig", "DiffusionConfig", "ModelConfig", "TrainConfig"]


def schedule_names() -> tuple[str, ...]:
    """``--noise_schedule`` choices: the beta schedules of :mod:`diffuseq.diffusion.schedules`."""
    from diffuseq.diffusion.schedules import SCHEDULE_NAMES

    return SCHEDULE_NAMES


def timestep_distribution_names() -> tuple[str, ...]:
    """``--schedule_sampler`` choices (:mod:`diffuseq.diffusion.timesteps`, torch-free)."""
    from diffuseq.diffusion.timesteps import TIMESTEP_DISTRIBUTION_NAMES

    return TIMESTEP_DISTRIBUTION_NAMES


def family_choices() -> tuple[str, ...]:
    """``--family`` choices (:data:`diffuseq.families.FAMILIES`, torch-free)."""
    from diffuseq.families import family_names

    return family_names()


def eval_sampler_choices() -> tuple[str, ...]:
    """``--eval_decode_sampler`` choices: those of ``--sampler`` (:mod:`diffuseq.config.decode`)."""
    from diffuseq.config.decode import sampler_choices

    return sampler_choices()


@dataclass(frozen=True)
class ModelConfig:
    """The transformer denoiser (docs/original.md §4)."""

    family: str = opt(
        "gaussian",
        "model family (diffuseq.families): gaussian = DiffuSeq / DiffuSeq-v2, the original; "
        "ar = autoregressive encoder-decoder baseline; discrete = RDM absorbing-state diffusion",
        choices=family_choices,
    )
    ar_layers: str = opt(
        "auto",
        "ar family: encoder+decoder layers as E+D (6+6 = Transformer-base); auto = the balanced "
        "split whose parameter count is closest to the gaussian model of the same flags",
        metavar="auto|E+D",
    )

    hidden_dim: int = opt(
        128, "word-embedding size h (model input/output size)", recipe=True, in_weights=True
    )
    hidden_t_dim: int = opt(
        128, "size of the sinusoidal timestep embedding", recipe=True, in_weights=True
    )
    dropout: float = opt(0.1, "dropout of the embedding LayerNorm output and BERT hidden layers")
    config_name: str = opt(
        "bert-base-uncased",
        "BERT architecture: bert-base-uncased (built in, offline), a local folder with "
        "config.json, or a hub name already in the local cache",
        recipe=True,
    )
    use_plm_init: str = opt("no", "initialise from pretrained BERT weights", choices=("no", "bert"))
    num_layers: int = opt(
        0,
        "override the encoder's number of layers (0 = from config_name)",
        recipe=True,
        in_weights="{flag} / --config_name",
    )
    num_heads: int = opt(0, "override the number of attention heads (0 = from config_name)")
    bert_hidden_size: int = opt(
        0,
        "override the encoder width H (0 = from config_name)",
        recipe=True,
        in_weights="{flag} / --config_name",
    )
    intermediate_size: int = opt(
        0,
        "override the feed-forward size (0 = from config_name)",
        in_weights="{flag} / --config_name",
    )
    attention: str = opt("sdpa", "attention kernel of the encoder", choices=("sdpa", "eager"))
    learned_mean_embed: bool = opt(
        False,
        "DiffuSeq-v2 soft absorbing state: learn a mean embedding",
        recipe=True,
        in_weights=True,
    )
    self_cond: bool = opt(
        False,
        "self-conditioning (beyond the original): the denoiser also sees its previous estimate "
        "of x_0 (trained with a 50% two-pass forward; every sampler feeds the last step's)",
        recipe=True,
        in_weights=True,
    )
    embedding_norm: bool = opt(
        False,
        "embedding normalisation (beyond the original; Difformer, Gao et al. 2022): x_0 is "
        "LayerNorm(E[w]) (elementwise-affine), and rounding and the tied read-out use the "
        "normalised table",
        recipe=True,
        in_weights=True,
    )
    length_predict: bool = opt(
        False,
        "length prediction (beyond the original; Difformer, Gao et al. 2022; DINOISER): a "
        "one-layer head predicts the target length from the source; training keeps the padding "
        "clean like the source (the loss covers the [CLS] y [SEP] span only) and adds "
        "--length_loss_weight x its cross-entropy; decoding samples the --length_beam most "
        "likely lengths",
        recipe=True,
        in_weights=True,
    )
    vocab_size: int = opt(
        0,
        "vocabulary size (filled in from the tokenizer)",
        in_weights="the vocabulary (--vocab / tokenizer)",
    )


@dataclass(frozen=True)
class DiffusionConfig:
    """The forward process, the loss and the timestep sampler (docs/original.md §5)."""

    diffusion_steps: int = opt(
        4000, "number of diffusion steps T (2 to 100000)", flag="diff_steps", recipe=True
    )
    noise_schedule: str = opt("cosine", "beta schedule", choices=schedule_names, recipe=True)
    schedule_sampler: str = opt(
        "uniform",
        "timestep distribution for training",
        choices=timestep_distribution_names,
        recipe=True,
    )
    timestep_respacing: str = opt("", "respacing of the training process ('' = none)")
    rescale_timesteps: bool = opt(True, "feed the network t*1000/T instead of t")
    denoise: bool = opt(
        False, "DiffuSeq-v2 discrete noise: replace positions by the mean embedding", recipe=True
    )
    denoise_rate: float = opt(
        0.2, "DiffuSeq-v2 discrete-noise rate (code default 0.2; v2 recipe 0.5)"
    )
    reg_rate: float = opt(
        0.01,
        "weight of the ||mean_embed|| regulariser (the original always used 0.01, ignoring its flag)",
    )
    noise_floor: float = opt(
        0.0,
        "noise floor F in [0, 1) (beyond the original; DINOISER, Ye et al. 2023): train only on "
        "t >= round(F*T) and tell the network max(t, round(F*T)) when sampling (0 = off)",
        recipe=True,
    )
    noise_rescale: float = opt(
        0.0,
        "noise rescaling factor F >= 1 (beyond the original; Difformer, Gao et al. 2022): the "
        "schedule's signal-to-noise ratio divided by F^2 at every step, in training and every "
        "sampler (0 = off)",
        recipe=True,
    )
    anchor_loss: bool = opt(
        False,
        "anchor loss (beyond the original; Difformer, Gao et al. 2022): add the target span's "
        "cross-entropy of the tokens read out from the predicted x_0 (logged as anchor_loss)",
        recipe=True,
    )
    length_loss_weight: float = opt(
        0.1,
        "weight of the length head's cross-entropy in the loss (with --length_predict; "
        "logged unweighted as length_loss)",
        recipe=True,
    )
    adaptive_schedule: int = opt(
        0,
        "adaptive noise schedule (beyond the original; SeqDiffuSeq, Yuan et al. 2022, "
        "sequence-level here): every N updates, refit the betas so that the per-t EMA of the "
        "mse term grows linearly in t; the weights carry the schedule to decoding (0 = off)",
        metavar="N",
        recipe=True,
        in_weights="{flag} N > 0 (the weights carry the refitted schedule, noise_betas)",
    )


@dataclass(frozen=True)
class DataConfig:
    """Dataset and tokenizer (docs/original.md §3)."""

    dataset: str = opt("", "dataset name (used in the run folder name)")
    data_dir: str = opt("", "folder with train.jsonl, valid.jsonl, test.jsonl")
    seq_len: int = opt(
        128, "total length of [CLS] x [SEP] [SEP] [CLS] y [SEP] [PAD]...", recipe=True
    )
    vocab: str = opt(
        "bert",
        "tokenizer: 'bert' (from --config_name), 'hf:NAME_OR_FOLDER', a vocab file in the "
        "original word-level format, or 'wordpiece' (trained on the training data)",
        recipe=True,
    )
    wordpiece_vocab_size: int = opt(8000, "vocabulary size for --vocab wordpiece")
    num_workers: int = opt(0, "DataLoader worker processes")
    data_cache: str = opt(
        "auto",
        "tokenization cache: 'auto' ($XDG_CACHE_HOME/diffuseq/data, else "
        "~/.cache/diffuseq/data), 'off' (tokenize on every launch) or a folder; rank 0 "
        "tokenizes each split once, every rank memory-maps it, a changed file or tokenizer "
        "is tokenized again",
        metavar="auto|off|DIR",
    )


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, checkpointing and logging (docs/original.md §6)."""

    lr: float = opt(1e-4, "peak learning rate (linear decay to 0, no warm-up)", recipe=True)
    batch_size: int = opt(64, "examples per step and per process", flag="bsz", recipe=True)
    microbatch: int = opt(64, "micro-batch size for gradient accumulation (<=0: = --bsz)")
    learning_steps: int = opt(40000, "total optimizer steps (including resumed ones)", recipe=True)
    save_interval: int = opt(10000, "save checkpoints every N steps")
    log_interval: int = opt(20, "log averaged metrics every N steps")
    eval_interval: int = opt(1000, "compute the loss of one validation batch every N steps")
    ema_rate: str = opt("0.9999", "comma-separated EMA rates", recipe=True)
    weight_decay: float = opt(0.0, "AdamW weight decay")
    gradient_clipping: float = opt(-1.0, "clip the gradient norm to this value (<=0: off)")
    use_fp16: bool = opt(False, "mixed precision fp16 with a GradScaler (torch.amp)")
    bf16: bool = opt(False, "mixed precision bf16 autocast (no scaler)")
    tf32: bool = opt(
        False, "CUDA: let fp32 matmuls use TF32 tensor cores (faster, ~1e-3 relative precision)"
    )
    compile: bool = opt(
        False,
        "torch.compile the network (fused kernels; the first steps include compiling it); "
        "saved states are the same as eager ones, so either kind of run resumes the other "
        "(give --compile false to continue a compiled run eagerly); falls back to eager with "
        "a warning where compiling is not available",
    )
    seed: int = opt(101, "random seed", recipe=True)
    resume_checkpoint: str = opt(
        "none",
        "resume from a training state, an original ema_*.pt file, or 'auto' (newest in the run folder)",
    )
    checkpoint_path: str = opt(
        "", "run folder (default: diffusion_models/<name built from the flags>)"
    )
    notes: str = opt("-", "free text appended to the run folder name with a timestamp")
    run_name_format: str = opt(
        "portable",
        "run folder name: portable (no ':', notes '-' left out: ..._seed102_qqp_20250101-120000) "
        "or original (the original's ..._seed102_qqp20250101-12:00:00, for tools that parse it)",
        choices=("portable", "original"),
    )
    log_wandb: bool = opt(False, "also log to Weights & Biases (never required)", flag="wandb")
    tensorboard: bool = opt(
        False,
        "also write the metrics as TensorBoard events in RUN/tensorboard/ (needs the "
        "tensorboard package: pip install .[tensorboard])",
    )
    ema_tied_quirk: bool = opt(
        False,
        "reproduce the original's EMA file, whose lm_head.weight holds the raw (non-EMA) tied weight",
    )
    same_seed_all_ranks: bool = opt(
        False, "reproduce the original: every rank uses the same seed (identical noise on all GPUs)"
    )
    fixed_data_order: bool = opt(
        False, "reproduce the original: never call set_epoch (same shuffle every epoch)"
    )
    eval_decode_interval: int = opt(
        0,
        "every N steps decode --eval_decode_samples validation sources with the EMA weights and "
        "log decode_bleu, decode_rouge_l, decode_exact and 3 examples (0: off)",
        group="quality during training",
    )
    eval_decode_samples: int = opt(
        32, "validation sources decoded each time (the first K of valid.jsonl)",
        group="quality during training",
    )  # fmt: skip
    eval_decode_sampler: str = opt(
        "auto",
        "sampler of those decodes (auto: the family's fast one: gaussian dpm-solver++ 10 steps, "
        "discrete rdm 10 steps, ar greedy; a sampler that takes steps runs 10)",
        choices=eval_sampler_choices,
        group="quality during training",
    )

    @property
    def ema_rates(self) -> tuple[float, ...]:
        return tuple(float(r) for r in self.ema_rate.split(",") if r.strip())

    @property
    def effective_microbatch(self) -> int:
        return self.microbatch if self.microbatch > 0 else self.batch_size


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "diffusion": DiffusionConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "discrete": DiscreteConfig,
}
