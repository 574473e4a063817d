"""Factories: build the model, the diffusion process and the timestep sampler from a config.

The one place that turns :class:`diffuseq.config.RunConfig` sections into objects, used by
training, decoding and the Python API alike (the original's `create_model_and_diffusion`,
docs/original.md §4.1, §5.3).
"""

from __future__ import annotations

from diffuseq.config import DiffusionConfig, ModelConfig
from diffuseq.diffusion.gaussian import GaussianDiffusion
from diffuseq.diffusion.timestep_sampling import TimestepDistribution, create_timestep_distribution
from diffuseq.errors import ConfigError
from diffuseq.models.denoiser import TransformerNetModel
from diffuseq.models.encoder_config import build_bert_config


def encoder_config(config: ModelConfig):
    """The BERT encoder's ``transformers`` config for ``config`` (overrides applied)."""
    return build_bert_config(
        config.config_name,
        dropout=config.dropout,
        num_layers=config.num_layers or None,
        num_heads=config.num_heads or None,
        hidden_size=config.bert_hidden_size or None,
        intermediate_size=config.intermediate_size or None,
        attn_implementation=config.attention,
    )


def check_sequence_length(config: ModelConfig, seq_len: int) -> None:
    """Reject a ``--seq_len`` longer than the encoder's position table (before any work).

    Raises:
        ConfigError: ``seq_len`` exceeds ``max_position_embeddings``.
    """
    limit = encoder_config(config).max_position_embeddings
    if seq_len > limit:
        raise ConfigError(
            f"--seq_len {seq_len} exceeds the encoder's max_position_embeddings ({limit}) of "
            f"--config_name {config.config_name}; use a smaller --seq_len or a config with more "
            "positions"
        )


def build_model(
    config: ModelConfig,
    *,
    vocab_size: int | None = None,
    bert_config=None,
    pad_token_id: int | None = None,
    noise_betas=None,
) -> TransformerNetModel:
    """The transformer denoiser described by ``config`` (``vocab_size`` overrides the config's;
    ``bert_config``, a ``BertConfig``, replaces the one :func:`encoder_config` would build, as
    a model folder's saved encoder does; ``pad_token_id``, the tokenizer's, is what a
    ``--length_predict`` model pads with; ``noise_betas``: the ``--adaptive_schedule`` buffer's
    initial betas)."""
    if bert_config is None:
        bert_config = encoder_config(config)
    return TransformerNetModel(
        vocab_size=vocab_size or config.vocab_size,
        hidden_dim=config.hidden_dim,
        hidden_t_dim=config.hidden_t_dim,
        dropout=config.dropout,
        bert_config=bert_config,
        learned_mean_embed=config.learned_mean_embed,
        self_cond=config.self_cond,
        embedding_norm=config.embedding_norm,
        length_predict=config.length_predict,
        pad_token_id=pad_token_id,
        noise_betas=noise_betas,
        init_pretrained=config.use_plm_init,
        config_name=config.config_name,
    )


def build_diffusion(config: DiffusionConfig, *, respacing: str | None = None) -> GaussianDiffusion:
    """The Gaussian diffusion for ``config`` (``respacing`` overrides ``timestep_respacing``).

    Tables are built as the original's ``SpacedDiffusion`` builds them (betas recomputed from
    the cumulative product), so they equal the original's bit for bit (G1).
    """
    return GaussianDiffusion.from_schedule(
        noise_schedule=config.noise_schedule,
        diffusion_steps=config.diffusion_steps,
        timestep_respacing=config.timestep_respacing if respacing is None else respacing,
        rescale_timesteps=config.rescale_timesteps,
        denoise=config.denoise,
        denoise_rate=config.denoise_rate,
        reg_rate=config.reg_rate,
        noise_floor=config.noise_floor,
        noise_rescale=config.noise_rescale,
    )


def build_timestep_distribution(
    config: DiffusionConfig, diffusion: GaussianDiffusion
) -> TimestepDistribution:
    """The training distribution over t of ``diffusion`` (its noise floor applied)."""
    return create_timestep_distribution(
        config.schedule_sampler, diffusion, noise_floor=diffusion.noise_floor
    )
