"""Stamp the one version (VERSION) and the one LICENSE into every distribution and client.

    python deploy/release/stamp.py          write them (`make stamp`, run by `make generate`)
    python deploy/release/stamp.py --check  fail, naming each file, when one has drifted (`make check-stamp`)

VERSION holds one `MAJOR.MINOR.PATCH` that is at once a PEP 440, a SemVer (npm, Go) and a Maven
version, so every ecosystem carries the same string and nothing translates it. The sites below
are every place it is written; each pattern must match exactly once, so a site that moved or
vanished fails loudly instead of going stale. LICENSE is copied into each Python distribution's
root because an sdist holds only files under that root (a symlink would be packed as a dangling
link).
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VERSION_FORMAT = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+")

#: The Python distributions (each directory has its own pyproject.toml and needs a LICENSE copy).
DISTRIBUTIONS = ("clients/python", "server", "conformance")


@dataclass(frozen=True)
class Site:
    """One place the version is written: `pattern`'s group `v` is the version, matched once."""

    path: str
    what: str
    pattern: re.Pattern[str]


def _site(path: str, what: str, pattern: str) -> Site:
    return Site(path, what, re.compile(pattern, re.MULTILINE))


_V = r"(?P<v>[^\"<]*)"
SITES: tuple[Site, ...] = (
    _site("clients/python/pyproject.toml", "callqos version", rf'^version = "{_V}"'),
    _site("server/pyproject.toml", "callqos-server version", rf'^version = "{_V}"'),
    _site("server/pyproject.toml", "its callqos pin", rf'"callqos=={_V}"'),
    _site("conformance/pyproject.toml", "callqos-conformance version", rf'^version = "{_V}"'),
    _site("conformance/pyproject.toml", "its callqos pin", rf'"callqos=={_V}"'),
    _site("conformance/pyproject.toml", "its callqos-server pin (the server extra)", rf'"callqos-server=={_V}"'),
    _site("clients/go/callqos/version.go", "the Go client's Version", rf'^const Version = "{_V}"'),
    # Top-level keys of package.json / package-lock.json are indented by exactly two spaces.
    _site("clients/node/package.json", "the npm package version", rf'^  "version": "{_V}"'),
    _site("clients/node/package-lock.json", "the lockfile's version", rf'^  "version": "{_V}"'),
    _site(
        "clients/node/package-lock.json",
        "the lockfile's root package",
        rf'^    "": \{{\n      "name": "[^"]*",\n      "version": "{_V}"',
    ),
    _site(
        "clients/java/pom.xml",
        "the Maven project version",
        rf"^  <artifactId>callqos-client</artifactId>\n  <version>{_V}</version>",
    ),
)


def read_version(root: Path = ROOT) -> str:
    version = (root / "VERSION").read_text(encoding="utf-8").strip()
    if not VERSION_FORMAT.fullmatch(version):
        raise SystemExit(f"VERSION: {version!r} is not MAJOR.MINOR.PATCH")
    return version


def _match(site: Site, text: str) -> re.Match[str]:
    found = list(site.pattern.finditer(text))
    if len(found) != 1:
        raise SystemExit(
            f"{site.path}: {site.what}: expected one match of {site.pattern.pattern!r}, found {len(found)}"
        )
    return found[0]


def drift(root: Path = ROOT) -> list[str]:
    """Every site (and LICENSE copy) that does not say what VERSION and LICENSE say."""
    version = read_version(root)
    problems: list[str] = []
    for site in SITES:
        found = _match(site, (root / site.path).read_text(encoding="utf-8")).group("v")
        if found != version:
            problems.append(f"{site.path}: {site.what} is {found!r}, VERSION is {version!r}")
    license_text = (root / "LICENSE").read_bytes()
    for dist in DISTRIBUTIONS:
        copy = root / dist / "LICENSE"
        if not copy.exists() or copy.is_symlink() or copy.read_bytes() != license_text:
            problems.append(f"{dist}/LICENSE differs from LICENSE")
    return problems


def stamp(root: Path = ROOT) -> list[str]:
    """Write VERSION into every site and LICENSE into every distribution; the files changed."""
    version = read_version(root)
    changed: list[str] = []
    for site in SITES:
        path = root / site.path
        text = path.read_text(encoding="utf-8")
        match = _match(site, text)
        if match.group("v") != version:
            path.write_text(text[: match.start("v")] + version + text[match.end("v") :], encoding="utf-8")
            changed.append(site.path)
    license_text = (root / "LICENSE").read_bytes()
    for dist in DISTRIBUTIONS:
        copy = root / dist / "LICENSE"
        if copy.is_symlink() or not copy.exists() or copy.read_bytes() != license_text:
            copy.unlink(missing_ok=True)
            copy.write_bytes(license_text)
            changed.append(f"{dist}/LICENSE")
    return sorted(set(changed))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="deploy/release/stamp.py", description="Stamp VERSION and LICENSE into every distribution and client."
    )
    parser.add_argument("--check", action="store_true", help="only report drift (exit 1), write nothing")
    args = parser.parse_args(argv)
    if args.check:
        problems = drift()
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print("the version or LICENSE drifted from VERSION / LICENSE: run 'make stamp'", file=sys.stderr)
            return 1
        return 0
    for path in stamp():
        print(f"stamped {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
