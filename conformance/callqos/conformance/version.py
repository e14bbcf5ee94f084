"""The suite's version and the version of the specification it certifies against."""

from __future__ import annotations

SUITE_VERSION = "1.0.0"
# The API contract the checks are written against: protos/callqos/v1 (package callqos.v1), whose
# rules are stated, each with a clause id, in conformance/SPEC.md.
SPEC_VERSION = "callqos.v1"
# Where those clauses are written down; reports cite clause ids of this document.
SPEC_DOCUMENT = "conformance/SPEC.md"
