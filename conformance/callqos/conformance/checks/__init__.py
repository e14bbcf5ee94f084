"""Every check of the suite, as data (see model.Check). Importing the profile modules fills
REGISTRY in a fixed order; `all_checks()` returns them."""

from __future__ import annotations

from callqos.conformance.checks.registry import REGISTRY


def all_checks() -> list:
    from callqos.conformance.checks import (  # noqa: F401  (imported for registration)
        concurrency,
        core_admission,
        core_api,
        core_validation,
        events,
        provider_change,
        renegotiation,
    )

    seen: set[str] = set()
    for item in REGISTRY:
        if item.id in seen:
            raise RuntimeError(f"duplicate check id {item.id}")
        seen.add(item.id)
    return sorted(REGISTRY, key=lambda c: (not c.preflight, c.id))
