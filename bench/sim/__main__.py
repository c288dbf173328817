"""`python -m clockwork.bench.sim`."""

import sys

from clockwork.bench.sim.cli import main

sys.exit(main())
