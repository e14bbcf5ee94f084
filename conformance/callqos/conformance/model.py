"""What a check is, and what running one can produce. Checks are data: an ID, a level, a
profile, the clause they come from and the capabilities they need, plus the coroutine that
exercises the target."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from callqos.conformance.harness import CheckContext

PROFILES = ("core", "renegotiation", "events", "provider-change", "concurrency")


class Level(str, enum.Enum):
    MUST = "MUST"
    SHOULD = "SHOULD"


class Outcome(str, enum.Enum):
    PASSED = "passed"
    FAILED = "failed"  # the target broke the contract
    TIMEOUT = "timeout"  # the target did not answer in time: a failure of the target
    SKIPPED = "skipped"  # not applicable (capability not advertised, parameter missing)
    ERROR = "error"  # the harness could not run the check: not the target's fault
    XFAIL = "xfail"  # failed, and listed in --known-failing
    XPASS = "xpass"  # passed although listed in --known-failing: fails the run

    @property
    def is_failure(self) -> bool:
        return self in (Outcome.FAILED, Outcome.TIMEOUT, Outcome.XFAIL)


class CheckFailed(AssertionError):
    """The target broke the contract; the message says what was sent, expected and got."""


class CheckSkipped(Exception):
    """The check does not apply to this target; the message says why."""


class TargetTimeout(Exception):
    """The target (or its provider) did not answer within the deadline."""


# A predicate over capabilities for checks that need more than "this flag is true".
Needs = tuple[str, ...]


@dataclass(frozen=True)
class Check:
    id: str  # e.g. CORE-VAL-001; stable across releases
    title: str
    level: Level
    profile: str
    reference: str  # the clause: TAPI function, FLOWSPEC remark, RFC section, proto comment
    run: Callable[[CheckContext], Awaitable[None]]
    # ProviderCapabilities boolean fields that must be true; "!x" means must be false
    # (negative probes). A check whose needs are not met is skipped with the reason.
    needs: Needs = ()
    timeout_seconds: float = 10.0
    # Preflight checks run first, in a fixed order; the rest are shuffled by --seed.
    preflight: bool = False
    description: str = ""


@dataclass
class CheckResult:
    check: Check
    outcome: Outcome
    reason: str = ""
    duration_seconds: float = 0.0
    cleanup_errors: list[str] = field(default_factory=list)
