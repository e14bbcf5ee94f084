"""`python -m callqos.server`: the same as the `callqos-server` command."""

import sys

from callqos.server.cli import main

sys.exit(main(prog="python -m callqos.server"))
