"""The suite's version and the version of the specification it certifies against."""

from __future__ import annotations

from importlib import metadata

# The suite is versioned with its distribution (the repository's one VERSION), so a report names
# exactly the release that produced it.
SUITE_VERSION = metadata.version("callqos-conformance")
# The API contract the checks are written against: protos/callqos/v1 (package callqos.v1), whose
# rules are stated, each with a clause id, in conformance/SPEC.md.
SPEC_VERSION = "callqos.v1"
# Where those clauses are written down; reports cite clause ids of this document.
SPEC_DOCUMENT = "conformance/SPEC.md"
