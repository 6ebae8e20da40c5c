"""``python -m bench``: see bench/cli.py and docs/benchmark.md."""

import sys

from bench.cli import main

sys.exit(main())
