"""``python -m tokenbench.harness.train_compare``, the spelling committed READMEs use: a shim for
``tokenbench train-compare`` (harness/cli/train_compare.py)."""
import sys

from tokenbench.harness.cli.train_compare import main

if __name__ == "__main__":
    sys.exit(main())
