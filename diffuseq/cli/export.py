"""Write a Hugging Face model folder (model.safetensors, config.json, tokenizer, model card).

    diffuseq-export diffusion_models/RUN                      # its newest EMA checkpoint
    diffuseq-export diffusion_models/RUN/ema_0.9999_010000.pt --out models/qqp-10k
    python -m diffuseq.cli.export diffusion_models/RUN --eval eval.json --force

The source is a run folder (ours or the original's: its newest ``ema*.pt``, as decoding picks
it) or one EMA/model ``.pt`` file. The folder goes to ``RUN/hf/<checkpoint name>/`` unless
``--out``; it is written complete under a temporary name, then renamed, and the checkpoint is
only read. ``--eval`` records the averages of an ``eval_seq2seq.py --json`` report in
``config.json`` and the model card. Load the folder with ``diffuseq.decoding.api.load(DIR)``; push it
with ``hf upload USER/REPO DIR .`` (see diffuseq.store.hf_folder).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from diffuseq.cli.common import program_name, run_cli
from diffuseq.cli.flags import build_parser, config_from_args
from diffuseq.config import opt

PROG = program_name("diffuseq-export", "diffuseq.cli.export", "diffuseq-export")


@dataclass(frozen=True)
class ExportOptions:
    """What to export and where."""

    out: str = opt("", "the model folder to write (default: RUN/hf/<checkpoint name>)")
    pattern: str = opt(
        "ema", "with a run folder: export its newest checkpoint matching PATTERN*.pt"
    )
    eval: str = opt(
        "", "an eval_seq2seq.py --json report whose numbers go into config.json and the card"
    )
    force: bool = opt(False, "replace the output folder if it exists")


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser(PROG, __doc__, [(ExportOptions, "export")])
    parser.add_argument(
        "source", metavar="CHECKPOINT_OR_RUN", help="a run folder or an ema_*.pt checkpoint"
    )
    args = parser.parse_args(argv)
    options = config_from_args(args, ExportOptions)

    from diffuseq.store.hf_folder import export_checkpoint
    from diffuseq.store.model_card import read_evaluation

    evaluation = read_evaluation(options.eval) if options.eval else None
    out = export_checkpoint(
        args.source,
        out=options.out or None,
        pattern=options.pattern,
        evaluation=evaluation,
        replace=options.force,
    )
    print(f"{PROG}: wrote {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``diffuseq-export``; user errors print one paragraph and return 2."""
    return run_cli(_main, argv, PROG)


if __name__ == "__main__":
    raise SystemExit(main())
