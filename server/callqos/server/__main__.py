import sys

from callqos.server.cli import main

sys.exit(main())
