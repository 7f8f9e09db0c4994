"""``python -m exitwise`` (and ``torchrun ... -m exitwise``): the command line."""

import sys

from exitwise.cli import main

sys.exit(main())
