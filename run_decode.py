"""Decode with a trained model like the original scripts/run_decode.py; see diffuseq/cli/decode.py."""

from diffuseq.cli.decode import main

if __name__ == "__main__":
    raise SystemExit(main())
