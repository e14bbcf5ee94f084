import sys

from callqos.conformance.cli import main

sys.exit(main())
