"""The four outputs of a run: console summary, JUnit XML, JSON report and a Markdown report.
Each check is reported with the conformance/SPEC.md clauses it verifies."""

from __future__ import annotations

import datetime
import json
import platform
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from callqos.conformance.model import Outcome, Report
from callqos.conformance.version import SPEC_DOCUMENT, SPEC_VERSION, SUITE_VERSION

JSON_NAME, JUNIT_NAME, MARKDOWN_NAME, SUMMARY_NAME = "report.json", "junit.xml", "report.md", "summary.txt"
MARK = {
    "passed": "PASS",
    "failed": "FAIL",
    "timeout": "TIME",
    "skipped": "skip",
    "error": "ERR ",
    "xfail": "xfail",
    "xpass": "XPASS",
}


def console(report: Report) -> str:
    lines = [
        f"callqos conformance {SUITE_VERSION} (spec {SPEC_VERSION}, clauses of {SPEC_DOCUMENT})",
        f"target {report.target or '-'}  provider {report.provider or '-'}  seed {report.seed}"
        + (f"  histories {report.histories}" if report.histories else "")
        + f"  (reproduce with {report.reproduce})",
    ]
    if report.harness_error:
        lines.append(f"HARNESS ERROR: {report.harness_error}")
    failures = report.failures
    if failures:
        lines.append(f"FAILURES, most specific first ({len(failures)}; the first explains the fault):")
        for result in failures:
            lines.append(
                f"  {MARK[result.outcome.value]:5} {result.check.id:14} {result.check.level.value:6} {result.reason}"
            )
            if result.reproduction:
                lines.append("        reproduction:")
                lines += [f"          {line}" for line in result.reproduction.splitlines()]
        lines.append("")
        lines.append("ALL CHECKS, in the order they ran:")
    for result in report.results:
        line = (
            f"  {MARK[result.outcome.value]:5} {result.check.id:14} {result.check.level.value:6} {result.check.title}"
        )
        if result.outcome not in (Outcome.PASSED,) and result.reason:
            line += f"\n        → {result.reason}"
        elif result.detail:
            line += f"\n        ({result.detail})"
        lines.append(line)
    lines.append("")
    for profile, verdict in report.verdicts.items():
        must, should = verdict["MUST"], verdict["SHOULD"]
        lines.append(f"  {profile:16} {verdict['result']!s:15} MUST {_counts(must)}  SHOULD {_counts(should)}")
    lines.append(
        f"VERDICT: {report.verdict}   ({len(report.results)} checks in {report.duration_seconds:.1f}s; "
        f"exit {report.exit_code}{_unexpected(report)})"
    )
    return "\n".join(lines)


def _counts(level: Any) -> str:
    counts = level["counts"]
    return "/".join(f"{counts.get(k, 0)}{k[0]}" for k in ("passed", "failed", "skipped")) + (
        f"/{counts['error']}e" if counts.get("error") else ""
    )


def mode(report: Report) -> str:
    """How the target was reached: `provider`, `provider-command`, `provider-endpoint` or `target`."""
    options = report.options
    if options.provider_command:
        return "provider-command"
    if options.provider_endpoint:
        return "provider-endpoint"
    return "provider" if options.provider else "target"


def spawned_with(report: Report) -> str:
    options = report.options
    if options.provider_command:
        return "spawned with --provider-command " + shlex.join(options.provider_command)
    if options.provider_endpoint:
        return "spawned with --provider-endpoint " + options.provider_endpoint
    return "spawned with --provider " + options.provider if options.provider else "--target"


def as_json(report: Report) -> dict[str, Any]:
    info = report.provider_info
    return {
        "kind": "CallQosConformanceReport",
        "suite_version": SUITE_VERSION,
        "spec_version": SPEC_VERSION,
        "spec_document": SPEC_DOCUMENT,
        "date": datetime.datetime.fromtimestamp(report.started, datetime.UTC).isoformat(),
        "host": platform.node(),
        "target": report.target,
        "mode": mode(report),
        "provider": {
            "name": report.provider,
            "plugin": report.options.provider,
            "command": list(report.options.provider_command),
            "endpoint": report.options.provider_endpoint,
            "display_name": info.display_name if info else "",
            "implementation": info.implementation if info else "",
            "capabilities": json_format.MessageToDict(info.capabilities, preserving_proto_field_name=True)
            if info
            else {},
        },
        "parameters": _parameters(report),
        "seed": report.seed,
        "histories": report.histories,
        "reproduce": report.reproduce,
        "timeout_scale": report.options.timeout_scale,
        "known_failing": list(report.options.known_failing),
        "verdict": report.verdict,
        "exit_code": report.exit_code,
        "harness_error": report.harness_error,
        "duration_seconds": round(report.duration_seconds, 3),
        "profiles": report.verdicts,
        # Failed checks, most specific first: the first one explains the fault.
        "failures": [r.check.id for r in report.failures],
        "checks": [
            {
                "id": r.check.id,
                "title": r.check.title,
                "profile": r.check.profile,
                "level": r.check.level.value,
                "clauses": list(r.check.clauses),
                "source": r.check.source,
                "reference": r.check.reference,
                "needs": list(r.check.needs),
                "outcome": r.outcome.value,
                "reason": r.reason,
                "duration_seconds": round(r.duration_seconds, 4),
                "cleanup_errors": r.cleanup_errors,
                "findings": r.findings,
                "reproduction": r.reproduction,
                "detail": r.detail,
            }
            for r in report.results
        ],
    }


def _parameters(report: Report) -> dict[str, Any]:
    p = report.parameters
    if p is None:
        return {}

    def qos(value: Any) -> Any:
        return json_format.MessageToDict(value, preserving_proto_field_name=True) if value is not None else None

    return {
        "source": p.source,
        "destination": p.destination,
        "capacity_bytes_per_second": p.capacity,
        "max_fill_calls": p.max_fill_calls,
        "feasible": qos(p.feasible),
        "infeasible": qos(p.infeasible),
        "policy_refused": qos(p.policy_refused),
    }


def junit(report: Report) -> str:
    suite = ET.Element(
        "testsuite",
        name="callqos-conformance",
        tests=str(len(report.results)),
        failures=str(sum(r.outcome in (Outcome.FAILED, Outcome.TIMEOUT, Outcome.XPASS) for r in report.results)),
        errors=str(sum(r.outcome == Outcome.ERROR for r in report.results) + bool(report.harness_error)),
        skipped=str(sum(r.outcome in (Outcome.SKIPPED, Outcome.XFAIL) for r in report.results)),
        time=f"{report.duration_seconds:.3f}",
    )
    props = ET.SubElement(suite, "properties")
    for key, value in (
        ("suite_version", SUITE_VERSION),
        ("spec_version", SPEC_VERSION),
        ("spec_document", SPEC_DOCUMENT),
        ("target", report.target),
        ("provider", report.provider),
        ("seed", str(report.seed)),
        ("histories", str(report.histories)),
        ("verdict", report.verdict),
    ):
        ET.SubElement(props, "property", name=key, value=value)
    for r in report.results:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"callqos.conformance.{r.check.profile}",
            name=f"{r.check.id} {r.check.title}",
            time=f"{r.duration_seconds:.3f}",
        )
        if r.outcome in (Outcome.FAILED, Outcome.TIMEOUT, Outcome.XPASS):
            ET.SubElement(
                case,
                "failure",
                message=f"[{r.check.level.value}] {r.outcome.value}: {r.reason}"[:500],
                type=r.outcome.value,
            ).text = f"{r.reason}\nreference: {r.check.reference}" + (
                f"\nreproduction:\n{r.reproduction}" if r.reproduction else ""
            )
        elif r.outcome == Outcome.ERROR:
            ET.SubElement(case, "error", message=r.reason[:500], type="harness").text = r.reason
        elif r.outcome in (Outcome.SKIPPED, Outcome.XFAIL):
            ET.SubElement(
                case,
                "skipped",
                message=(f"known failing: {r.reason}" if r.outcome == Outcome.XFAIL else r.reason)[:500],
            )
    if report.harness_error:
        case = ET.SubElement(suite, "testcase", classname="callqos.conformance.harness", name="connect to target")
        ET.SubElement(case, "error", message=report.harness_error[:500], type="harness")
    return ET.tostring(suite, encoding="unicode", xml_declaration=True)


def markdown(report: Report) -> str:
    info = report.provider_info
    out = [
        f"# callqos conformance report: `{report.provider or '?'}`",
        "",
        f"**Verdict: {report.verdict}**",
        "",
        "| | |",
        "|---|---|",
        f"| Suite | callqos-conformance {SUITE_VERSION} |",
        f"| Spec | {SPEC_VERSION} (clauses of `{SPEC_DOCUMENT}`) |",
        f"| Target | `{report.target}` ({spawned_with(report)}) |",
        f"| Implementation | `{info.implementation if info else ''}` |",
        f"| Seed | {report.seed} (reproduce with `{report.reproduce}`) |",
        f"| Timeout scale | {report.options.timeout_scale:g} |",
        f"| Duration | {report.duration_seconds:.1f} s |",
        "",
    ]
    if report.harness_error:
        out += [f"> Harness error: {report.harness_error}", ""]
    if info:
        caps = json_format.MessageToDict(info.capabilities, preserving_proto_field_name=True)
        out += ["## Advertised capabilities", "", "```json", json.dumps(caps, indent=2), "```", ""]
    if report.failures:
        out += ["## Failures, most specific first", ""]
        for r in report.failures:
            out += [f"- **{r.check.id}** ({r.check.level.value}, {r.outcome.value}): {r.reason}"]
            if r.reproduction:
                out += ["", "  Reproduction (`callqos` CLI):", "", "  ```sh"]
                out += [f"  {line}" for line in r.reproduction.splitlines()]
                out += ["  ```"]
        out.append("")
    out += [
        "## Profiles",
        "",
        "| Profile | Result | MUST (pass/fail/skip) | SHOULD (pass/fail/skip) |",
        "|---|---|---|---|",
    ]
    for profile, v in report.verdicts.items():
        out.append(f"| {profile} | **{v['result']}** | {_counts(v['MUST'])} | {_counts(v['SHOULD'])} |")
    out += [
        "",
        "## Checks",
        "",
        "| Check | Level | Outcome | Title | Clauses (source) | Reason |",
        "|---|---|---|---|---|---|",
    ]
    for r in report.results:
        reason = r.reason.replace("|", "\\|").replace("\n", " ")
        out.append(
            f"| {r.check.id} | {r.check.level.value} | {r.outcome.value} | {r.check.title} | "
            f"{', '.join(r.check.clauses)} ({r.check.source}) | {reason} |"
        )
    out += [
        "",
        "Verdicts: *conformant* — every applicable check passed; *partial* — no MUST failed, but a SHOULD failed,",
        "a check could not run, or a MUST was skipped for a missing parameter; *nonconformant* — a MUST failed.",
        "Checks skipped because a capability is not advertised do not lower the verdict.",
        "",
    ]
    return "\n".join(out)


def write_all(report: Report, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / SUMMARY_NAME).write_text(console(report) + "\n")
    (directory / JUNIT_NAME).write_text(junit(report))
    (directory / JSON_NAME).write_text(json.dumps(as_json(report), indent=2) + "\n")
    (directory / MARKDOWN_NAME).write_text(markdown(report))


def _unexpected(report: Report) -> str:
    return ", unexpected: " + " ".join(r.check.id for r in report.unexpected) if report.unexpected else ""
