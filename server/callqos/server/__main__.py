import os
import sys

# Before grpc is imported: gRPC core's own INFO lines (e.g. one per client GOAWAY) are neither
# JSON nor actionable. GRPC_VERBOSITY=INFO still brings them back.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from callqos.server.cli import main

sys.exit(main())
