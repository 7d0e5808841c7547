"""``python -m tokenbench.harness.cli`` (how torchrun starts ``tokenbench train``)."""
import sys

from . import main

sys.exit(main())
