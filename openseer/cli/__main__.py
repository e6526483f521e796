"""``python -m openseer.cli ...`` (what `openseer launch` runs under torchrun)."""

import sys

from openseer.cli import main

sys.exit(main())
