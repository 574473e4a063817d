"""The Gaussian diffusion over word embeddings (pure math; the model is passed in).

- :mod:`~diffuseq.diffusion.gaussian`: :class:`GaussianDiffusion`, the coefficient tables and
  closed forms (partial noising, posterior, reverse step);
- :mod:`~diffuseq.diffusion.losses`: the sequence-to-sequence training loss terms;
- :mod:`~diffuseq.diffusion.schedules`: the named β schedules;
- :mod:`~diffuseq.diffusion.respace`: timestep respacing;
- :mod:`~diffuseq.diffusion.timestep_sampling`: which training timesteps to draw (uniform,
  loss-aware).

Nothing here imports the trainer, the CLIs, :mod:`diffuseq.runtime.dist`, the logger, checkpoints or
decoding.
"""
