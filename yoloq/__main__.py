"""``python -m yoloq``: the same as the ``yoloq`` command."""

import sys

from yoloq.cli import main

sys.exit(main())
