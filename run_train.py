"""Train a DiffuSeq model: ``python run_train.py --help`` (or under ``torchrun``)."""

from diffuseq.cli.train import main

if __name__ == "__main__":
    raise SystemExit(main())
