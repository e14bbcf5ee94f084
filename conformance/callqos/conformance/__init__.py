"""callqos conformance suite: certifies that whatever answers the callqos.v1 gRPC API (a
server in any language, or a Python provider plugin hosted by the reference server) keeps the
provider contract — negotiate, fail, renegotiate, events — with a verdict and reports.

Library use:

    from callqos.conformance import run_conformance, RunOptions
    report = run_conformance(RunOptions(provider="reference"))
    assert report.verdict == "conformant"
"""

SUITE_VERSION = "1.0.0"
# The API contract the checks are written against: protos/callqos/v1 (package callqos.v1).
SPEC_VERSION = "callqos.v1"

from callqos.conformance.runner import RunOptions, run_conformance  # noqa: E402

__all__ = ["SPEC_VERSION", "SUITE_VERSION", "RunOptions", "run_conformance"]
