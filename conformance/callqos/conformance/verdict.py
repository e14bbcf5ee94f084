"""From check results to a verdict, per profile and level (Gateway API's success/partial/failure,
with RFC 2119 levels kept apart):

- nonconformant: a MUST check failed or timed out (known-failing ones included: the verdict is
  honest; --known-failing only changes the exit code);
- partial: no MUST failure, but a SHOULD check failed, a check could not run (harness error),
  or a MUST check was skipped for a reason other than an unadvertised capability or the mode
  (checks that restart the server need --provider);
- conformant: everything that applies passed;
- not-applicable: every check of the profile was skipped because the capability is not advertised.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from callqos.conformance.model import PROFILES, CheckResult, Level, Outcome

RANK = {"not-applicable": 0, "conformant": 1, "partial": 2, "nonconformant": 3}
CAPABILITY_SKIP = "capability"  # reasons of capability skips start with this word
# Checks that need the suite to own the target's server (restart it, read its log) are skipped
# under --target with a reason starting with this word; like a capability skip, the profile is
# then not applicable rather than partial, and the report says the mode did not cover it.
MODE_SKIP = "mode"


def not_applicable(result: CheckResult) -> bool:
    return result.outcome == Outcome.SKIPPED and result.reason.startswith((CAPABILITY_SKIP, MODE_SKIP))


@dataclass
class LevelSummary:
    result: str
    counts: dict[str, int] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def level_result(results: list[CheckResult]) -> LevelSummary:
    counts = Counter(r.outcome.value for r in results)
    failed = [r.check.id for r in results if r.outcome.is_failure]
    skipped = [r.check.id for r in results if r.outcome == Outcome.SKIPPED]
    if not results or all(not_applicable(r) for r in results):
        result = "not-applicable"
    elif failed:
        result = "nonconformant"
    elif any(r.outcome == Outcome.ERROR for r in results) or any(
        r.outcome == Outcome.SKIPPED and not not_applicable(r) for r in results
    ):
        result = "partial"
    else:
        result = "conformant"
    return LevelSummary(result, dict(counts), failed, skipped)


def profile_verdicts(results: list[CheckResult]) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for profile in PROFILES:
        mine = [r for r in results if r.check.profile == profile]
        must = level_result([r for r in mine if r.check.level == Level.MUST])
        should = level_result([r for r in mine if r.check.level == Level.SHOULD])
        # A SHOULD failure makes the profile partial, never nonconformant.
        should_effect = "partial" if should.result == "nonconformant" else should.result
        overall = max((must.result, should_effect), key=RANK.__getitem__)
        if overall == "not-applicable" and must.result == "conformant":
            overall = "conformant"
        out[profile] = {"result": overall, "MUST": must.__dict__, "SHOULD": should.__dict__}
    return out


def overall(verdicts: dict[str, dict[str, object]]) -> str:
    results = [str(v["result"]) for v in verdicts.values()]
    worst = max(results, key=RANK.__getitem__, default="not-applicable")
    return "conformant" if worst == "not-applicable" else worst
