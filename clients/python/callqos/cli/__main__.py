"""``python -m callqos.cli``: the same as the ``callqos`` command."""

import sys

from callqos.cli.main import main

sys.exit(main())
