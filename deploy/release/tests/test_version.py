"""One version for every distribution and client: VERSION, stamped by deploy/release/stamp.py, and what
each command says with --version."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "deploy/release"))

import stamp  # noqa: E402 -- deploy/release/ is a directory of scripts, not a package

VERSION = (ROOT / "VERSION").read_text(encoding="utf-8").strip()
BIN = Path(sys.executable).parent


def test_the_tree_carries_one_version_and_one_license() -> None:
    assert stamp.drift() == []


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of every file the stamp writes, laid out as in the repository."""
    for relative in (
        {site.path for site in stamp.SITES}
        | {"VERSION", "LICENSE"}
        | {f"{dist}/LICENSE" for dist in stamp.DISTRIBUTIONS}
    ):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / relative, tmp_path / relative)
    return tmp_path


def test_a_new_version_is_stamped_everywhere_and_a_drift_is_named(tree: Path) -> None:
    (tree / "VERSION").write_text("7.8.9\n")
    problems = stamp.drift(tree)
    # Every site is named, the exact pins included.
    assert len(problems) == len(stamp.SITES)
    assert any(p.startswith("conformance/pyproject.toml: its callqos-server pin") for p in problems)
    assert any(p.startswith("clients/go/callqos/version.go") for p in problems)

    changed = stamp.stamp(tree)
    assert stamp.drift(tree) == []
    assert set(changed) == {site.path for site in stamp.SITES}
    assert '"callqos==7.8.9"' in (tree / "server/pyproject.toml").read_text()
    assert 'const Version = "7.8.9"' in (tree / "clients/go/callqos/version.go").read_text()
    assert "<version>7.8.9</version>" in (tree / "clients/java/pom.xml").read_text()

    # A hand edit of one site is caught, and only that one.
    pom = tree / "clients/java/pom.xml"
    pom.write_text(pom.read_text().replace("<version>7.8.9</version>", "<version>7.8.10</version>", 1))
    assert stamp.drift(tree) == ["clients/java/pom.xml: the Maven project version is '7.8.10', VERSION is '7.8.9'"]


def test_a_stale_license_copy_is_caught_and_replaced(tree: Path) -> None:
    (tree / "server/LICENSE").write_text("MIT\n")
    assert stamp.drift(tree) == ["server/LICENSE differs from LICENSE"]
    assert stamp.stamp(tree) == ["server/LICENSE"]
    assert (tree / "server/LICENSE").read_bytes() == (ROOT / "LICENSE").read_bytes()


def test_a_site_that_vanished_fails_loudly(tree: Path) -> None:
    (tree / "clients/go/callqos/version.go").write_text("package callqos\n")
    with pytest.raises(SystemExit, match=re.escape("version.go: the Go client's Version: expected one match")):
        stamp.drift(tree)


def test_a_version_every_ecosystem_reads_alike(tree: Path) -> None:
    (tree / "VERSION").write_text("1.0.0.dev1\n")
    with pytest.raises(SystemExit, match=re.escape("not MAJOR.MINOR.PATCH")):
        stamp.stamp(tree)


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ([BIN / "callqos", "--version"], f"callqos {VERSION}"),
        ([BIN / "callqos", "serve", "--version"], f"callqos-server {VERSION}"),
        ([BIN / "callqos-server", "--version"], f"callqos-server {VERSION}"),
        ([sys.executable, "-m", "callqos.server", "--version"], f"callqos-server {VERSION}"),
        ([BIN / "callqos-conformance", "--version"], f"callqos-conformance {VERSION}"),
    ],
    ids=lambda value: " ".join(Path(str(v)).name for v in value) if isinstance(value, list) else None,
)
def test_every_command_prints_the_version(command: list[str | Path], expected: str) -> None:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=60, check=False)
    assert (result.returncode, result.stdout.strip()) == (0, expected), result.stderr
