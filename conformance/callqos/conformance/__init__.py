"""callqos conformance suite: certifies that whatever answers the callqos.v1 gRPC API (a
server in any language, or a Python provider plugin hosted by the reference server) keeps the
provider contract — negotiate, fail, renegotiate, events — with a verdict and reports. Every
check cites the clauses of conformance/SPEC.md it verifies.

Library use:

    from callqos.conformance import run_conformance, RunOptions
    report = run_conformance(RunOptions(provider="reference"))
    assert report.verdict == "conformant"
"""

from callqos.conformance.model import RunOptions
from callqos.conformance.runner import run_conformance
from callqos.conformance.version import SPEC_VERSION, SUITE_VERSION

__all__ = ["SPEC_VERSION", "SUITE_VERSION", "RunOptions", "run_conformance"]
