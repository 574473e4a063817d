"""Names of the swappable pieces that the command lines offer as choices, importable without
torch (so that ``--help`` and flag checks do not load it).

The registries are keyed by exactly these names and check so when they are imported:
:data:`diffuseq.sampling.SAMPLERS` and ``diffuseq.diffusion.timestep_sampling`` (the beta
schedules' names, :data:`diffuseq.diffusion.schedules.SCHEDULE_NAMES`, need only numpy).
"""

from __future__ import annotations

__all__ = ["SAMPLER_NAMES", "TIMESTEP_DISTRIBUTION_NAMES"]

#: Decoding algorithms (:data:`diffuseq.sampling.SAMPLERS`), as used in output folder names.
SAMPLER_NAMES: tuple[str, ...] = (
    "ancestral",
    "ddim",
    "ddim-adjacent",
    "dpm-solver++",
    "dpm-solver++-v2",
    "sde-dpm-solver++",
)

#: Timestep distributions for training (``--schedule_sampler``).
TIMESTEP_DISTRIBUTION_NAMES: tuple[str, ...] = ("uniform", "lossaware", "fixstep")
