"""Every check of the suite, as data (see model.Check). Importing the profile modules fills
REGISTRY in a fixed order; `all_checks()` returns them."""

from __future__ import annotations

# One line per module of checks (a new profile's module is one more line).
from callqos.conformance.checks import (  # noqa: F401  (imported for registration)
    concurrency,
    core_accounting,
    core_admission,
    core_api,
    core_validation,
    events,
    host,
    incoming,
    model_based,
    protocol,
    provider_change,
    renegotiation,
    restart,
)
from callqos.conformance.checks.registry import REGISTRY
from callqos.conformance.model import Check


def all_checks() -> list[Check]:
    """Every registered check, preflight first, then by id; a duplicate id is a bug of the suite."""
    seen: set[str] = set()
    for item in REGISTRY:
        if item.id in seen:
            raise RuntimeError(f"duplicate check id {item.id}")
        seen.add(item.id)
    return sorted(REGISTRY, key=lambda c: (not c.preflight, c.id))
