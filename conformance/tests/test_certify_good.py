"""The suite passes correct providers — LedgerProvider (everything, restarts and side servers included),
no-qos (renegotiation and links skipped with the reason, its negative probes passing) — by --provider
and by --target, with all four reports written — and the reference provider."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from callqos.conformance.broken import LEDGER
from callqos.conformance.model import Outcome, Report
from callqos.conformance.runner import RunOptions, run_conformance
from callqos.conformance.target import SpawnedServer


def by_id(report: Report) -> dict[str, object]:
    return {r.check.id: r for r in report.results}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Report:
    return run_conformance(
        RunOptions(provider="reference", seed=11, histories=10, output_dir=tmp_path_factory.mktemp("reference"))
    )


def test_the_reference_provider_is_conformant(reference: Report) -> None:
    """#11 fixed what the suite found in it (CORE-ADM-019, PCHG-004, RESTART-002); MODEL-001's last
    finding was the model's: it demanded a GUARANTEED grant whose delay bound no latency can state."""
    assert reference.verdict == "conformant", [(r.check.id, r.reason[:300]) for r in reference.failures]
    assert not reference.harness_error


def test_a_correct_provider_is_conformant_and_reports_are_written(tmp_path: Path) -> None:
    report = run_conformance(RunOptions(provider=LEDGER, seed=11, histories=10, output_dir=tmp_path))
    assert report.verdict == "conformant", [(r.check.id, r.reason) for r in report.unexpected]
    assert report.exit_code == 0
    assert all(v["result"] == "conformant" for v in report.verdicts.values())
    results = by_id(report)
    assert "histories" in results["MODEL-001"].detail  # type: ignore[attr-defined]
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["verdict"] == "conformant" and data["seed"] == 11 and data["failures"] == []
    # The seed and the number of histories run say what to pass to run exactly this again.
    assert data["histories"] == 10 and data["reproduce"] == "--seed 11 --histories 10"
    assert data["suite_version"] and data["spec_version"] == "callqos.v1"
    assert data["provider"]["capabilities"]["renegotiation"] is True
    assert {c["outcome"] for c in data["checks"]} <= {"passed", "skipped"}
    assert all(c["reference"] and c["level"] in ("MUST", "SHOULD") for c in data["checks"])
    # Every check is reported with the SPEC.md clauses it verifies, and the report says which document.
    assert data["spec_document"] == "conformance/SPEC.md" and all(c["clauses"] for c in data["checks"])
    suite = ET.parse(tmp_path / "junit.xml").getroot()
    assert suite.get("failures") == "0" and int(suite.get("tests") or 0) == len(data["checks"])
    assert "**Verdict: conformant**" in (tmp_path / "report.md").read_text()
    assert "VERDICT: conformant" in (tmp_path / "summary.txt").read_text()
    assert "(reproduce with --seed 11 --histories 10)" in (tmp_path / "summary.txt").read_text()
    assert "reproduce with `--seed 11 --histories 10`" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "server.log").exists()


def test_no_qos_provider_is_conformant_with_reasoned_skips() -> None:
    report = run_conformance(RunOptions(provider="no-qos", seed=5, histories=1))
    assert report.verdict == "conformant", [(r.check.id, r.reason) for r in report.unexpected]
    results = by_id(report)
    assert results["RENEG-007"].outcome == Outcome.PASSED  # type: ignore[attr-defined]  # UNIMPLEMENTED probe
    assert results["CORE-CAP-002"].outcome == Outcome.PASSED  # type: ignore[attr-defined]  # link_admin probe
    for check in ("RENEG-001", "RENEG-003", "EVT-003"):
        assert results[check].outcome == Outcome.SKIPPED  # type: ignore[attr-defined]
        assert "renegotiation is not advertised" in results[check].reason  # type: ignore[attr-defined]


def test_target_mode_against_a_separately_started_server_via_the_cli(tmp_path: Path) -> None:
    with SpawnedServer(LEDGER) as server:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "callqos.conformance",
                "--target",
                server.target,
                "--seed",
                "3",
                "--histories",
                "3",
                "--output-dir",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "VERDICT: conformant" in done.stdout
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["mode"] == "target"
    # What needs the suite to own the server was not certified, and the report says so.
    restart = [c for c in data["checks"] if c["profile"] == "restart"]
    assert restart and all(c["outcome"] == "skipped" and c["reason"].startswith("mode:") for c in restart)
    assert data["profiles"]["restart"]["result"] == "not-applicable"


def test_cli_list_prints_every_check() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "callqos.conformance", "list"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    assert "CORE-VAL-001" in done.stdout and "CONC-001" in done.stdout and "MODEL-001" in done.stdout
    assert "spec: FLOW-1, FLOW-3 (Winsock2 FLOWSPEC remarks" in done.stdout  # the clauses each check verifies
