"""``python -m catga_sync.testing demo | fuzz | replay SEED`` (the commands: :mod:`.cli`)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
