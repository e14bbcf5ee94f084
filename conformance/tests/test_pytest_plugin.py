"""The suite used as a pytest plugin: a provider's own test run, one test per check."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TEST_FILE = """
from callqos.conformance.pytest_plugin import conformance_tests

test_conformance = conformance_tests(provider={provider!r}, profiles=("core", "renegotiation"))
"""


def _pytest(tmp_path: Path, provider: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_my_provider.py").write_text(TEST_FILE.format(provider=provider))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )


def test_a_conformant_provider_passes_its_own_test_run(tmp_path: Path) -> None:
    result = _pytest(tmp_path, "no-qos")
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout and " skipped" in result.stdout  # renegotiation checks skip


def test_a_broken_provider_fails_with_the_check_that_names_its_fault(tmp_path: Path) -> None:
    result = _pytest(tmp_path, "callqos.conformance.broken.providers:AdvertisesRenegotiationButRefuses")
    assert result.returncode == 1
    assert "FAILED" in result.stdout and "test_conformance[RENEG-001]" in result.stdout
