"""``python -m brainsurgeon`` (and ``torchrun --nproc-per-node N -m brainsurgeon ...``)."""

import sys

from brainsurgeon.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
