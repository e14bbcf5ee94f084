"""`python -m callqos.conformance.broken`: certify every broken implementation and print the
fault → failing checks table (the self-test, by hand)."""

import sys

from callqos.conformance.broken.selftest import main

sys.exit(main())
