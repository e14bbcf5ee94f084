"""Every README code block that says it is runnable runs, as written, against a real server.

A block claims to be runnable with an HTML comment on the line before its fence:

    <!-- runnable -->
    ```python
    ...
    ```

Each such block, in README.md, clients/*/README.md, deploy/README.md, conformance/README.md and
server/README.md, runs in a fresh temporary directory against a fresh server (in memory), which
it finds by the address convention: CALLQOS_TARGET is set to the server's address, as a user's
shell would have it, and the repository's .venv/bin comes first on PATH.

- `python` blocks run as a program and must exit 0.
- `sh` / `bash` blocks run with `bash -eu -o pipefail` and must exit 0.
- `console` blocks run each `$ ` line; a `# exits N` line after one says it must exit N (0
  otherwise), like the README's tour.

README.md's tour and its two-application scene are console blocks without the marker: they run in
order on one server, as a reader runs them, with their output checked, in test_readme_tour.py —
once, not twice. Every other console block of README.md must be marked.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from server_testkit import ROOT

from callqos.server import testing

MARKER = "<!-- runnable -->"
DOCUMENTS = [
    ROOT / "README.md",
    *sorted((ROOT / "clients").glob("*/README.md")),
    ROOT / "deploy" / "README.md",
    ROOT / "conformance" / "README.md",
    ROOT / "server" / "README.md",
]
LANGUAGES = {"python", "sh", "bash", "console"}
TIMEOUT_SECONDS = 120


@dataclass(frozen=True)
class Block:
    document: Path
    line: int  # of the opening fence
    language: str
    text: str

    @property
    def name(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"


def runnable_blocks(document: Path) -> list[Block]:
    """The blocks of `document` marked runnable (a marker must be followed by a fenced block)."""
    lines = document.read_text().splitlines()
    blocks = []
    for index, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        fence = lines[index + 1] if index + 1 < len(lines) else ""
        match = re.fullmatch(r"(\s*)```(\w+)\s*", fence)
        assert match, f"{document}:{index + 1}: {MARKER} is not followed by a fenced code block"
        indent, language = match.groups()
        assert language in LANGUAGES, f"{document}:{index + 2}: cannot run a {language} block"
        body = []
        for following in lines[index + 2 :]:
            if following.strip() == "```":
                break
            body.append(following.removeprefix(indent))
        else:
            raise AssertionError(f"{document}:{index + 2}: unterminated block")
        blocks.append(Block(document, index + 2, language, "\n".join(body) + "\n"))
    return blocks


BLOCKS = [block for document in DOCUMENTS if document.exists() for block in runnable_blocks(document)]


def test_runnable_blocks_are_found() -> None:
    """The marker is in use (so that a typo in it cannot silently test nothing)."""
    assert len(BLOCKS) >= 4, [block.name for block in BLOCKS]
    for document in DOCUMENTS:
        text = document.read_text() if document.exists() else ""
        assert text.count("runnable -->") == text.count(MARKER), f"{document}: a misspelt marker"


# The sections whose console block test_readme_tour.py runs.
TOUR_SECTIONS = ("## A one-minute tour", "## A call between two applications")


def test_every_console_block_of_the_readme_is_run() -> None:
    """A console block of README.md is either marked runnable (run here) or the tour's or the
    scene's (run by test_readme_tour.py): none is left unrun, none is run twice."""
    lines = (ROOT / "README.md").read_text().splitlines()
    section = ""
    unrun, twice = [], []
    for index, line in enumerate(lines):
        if line.startswith("## "):
            section = line.strip()
        if line.strip() != "```console":
            continue
        marked = index > 0 and lines[index - 1].strip() == MARKER
        toured = section in TOUR_SECTIONS
        if marked and toured:
            twice.append(index + 1)
        elif not marked and not toured:
            unrun.append(index + 1)
    assert not unrun, f"README.md console blocks run by no test, at lines {unrun}: mark them {MARKER}"
    assert not twice, f"README.md lines {twice}: test_readme_tour.py runs these already; drop the marker"
    assert sum(1 for line in lines if line.strip() == "```console") >= len(TOUR_SECTIONS)


def console_steps(text: str) -> list[tuple[str, int]]:
    steps: list[tuple[str, int]] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], 0))
        elif (match := re.match(r"# exits (\d+)", line)) and steps:
            steps[-1] = (steps[-1][0], int(match.group(1)))
    return steps


@pytest.mark.parametrize("block", BLOCKS, ids=[block.name for block in BLOCKS])
def test_the_block_runs(block: Block, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    with testing.ServerProcess(tmp_path / "server") as server:
        env = {key: value for key, value in os.environ.items() if not key.startswith("CALLQOS_")}
        env["CALLQOS_TARGET"] = server.target
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"

        def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
            return subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=TIMEOUT_SECONDS)

        if block.language == "python":
            results = [("python block", 0, run([sys.executable, "-c", block.text]))]
        elif block.language in ("sh", "bash"):
            results = [("shell block", 0, run(["bash", "-eu", "-o", "pipefail", "-c", block.text]))]
        else:
            steps = console_steps(block.text)
            assert steps, f"{block.name}: a console block without `$ ` lines"
            results = [(command, expected, run(["bash", "-c", command])) for command, expected in steps]
        for what, expected, result in results:
            assert result.returncode == expected, (
                f"{block.name}: {what} exited {result.returncode}, not {expected}\n"
                f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
            )
