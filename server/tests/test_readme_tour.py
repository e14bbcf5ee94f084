"""The README's one-minute tour and its two-application scene, run as written against a real server.

The scene is README.md's section "A call between two applications", right after the tour; its
prompts name the principal a command runs as (`bob$`, `carol$`).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from server_testkit import ROOT

TOUR_HEADING = "## A one-minute tour"
SCENE_HEADING = "## A call between two applications"
_PROMPT = re.compile(r"(?:([a-z][a-z0-9-]*)\$|\$) (.*)")


def console_steps(block: str) -> list[tuple[str | None, str, int]]:
    """(principal, command, expected exit status) for each `$ callqos …` or `name$ callqos …`
    line of a console block; a following `# exits N` line gives a non-zero status."""
    steps: list[tuple[str | None, str, int]] = []
    for line in block.strip().splitlines():
        if match := _PROMPT.fullmatch(line):
            steps.append((match.group(1), match.group(2), 0))
        elif (exits := re.match(r"# exits (\d+)", line)) and steps:
            steps[-1] = (*steps[-1][:2], int(exits.group(1)))
    return steps


def _console_block(text: str) -> str:
    return text.split("```console", 1)[1].split("```", 1)[0]


def tour_steps() -> list[tuple[str | None, str, int]]:
    readme = (ROOT / "README.md").read_text()
    return console_steps(_console_block(readme.split(TOUR_HEADING, 1)[1]))


def scene_section() -> str:
    """README.md's section "A call between two applications"."""
    readme = (ROOT / "README.md").read_text()
    assert SCENE_HEADING in readme, "README.md has lost its two-application scene"
    section = SCENE_HEADING + readme.split(SCENE_HEADING, 1)[1]
    return section.split("\n## ", 1)[0].rstrip() + "\n"


def scene_steps() -> list[tuple[str | None, str, int]]:
    return console_steps(_console_block(scene_section()))


def run_steps(steps: list[tuple[str | None, str, int]], target: str) -> dict[str, str]:
    """Run each step with the `callqos` of this environment; the output of each command by its text."""
    callqos = Path(sys.executable).parent / "callqos"
    outputs: dict[str, str] = {}
    for principal, command, expected in steps:
        env = {**os.environ, "CALLQOS_TARGET": target}
        env.pop("CALLQOS_PRINCIPAL", None)
        if principal:
            env["CALLQOS_PRINCIPAL"] = principal
        argv = shlex.split(command)
        assert argv[0] == "callqos"
        result = subprocess.run([str(callqos), *argv[1:]], env=env, capture_output=True, text=True, timeout=30)
        assert result.returncode == expected, f"{principal or ''}$ {command}\n{result.stdout}\n{result.stderr}"
        assert result.stdout.strip() or result.stderr.strip(), f"{command} printed nothing"
        outputs[command] = result.stdout + result.stderr
    return outputs


def test_tour_and_scene_run_as_written(server_process, tmp_path: Path) -> None:
    server_process.start()
    steps = tour_steps()
    assert len(steps) >= 10
    run_steps(steps, server_process.target)
    callqos = Path(sys.executable).parent / "callqos"
    env = {**os.environ, "CALLQOS_TARGET": server_process.target}
    listed = subprocess.run([str(callqos), "get", "calls/carol"], env=env, capture_output=True, text=True)
    assert "qos-unavailable" in listed.stdout or "QOS_UNAVAILABLE" in listed.stdout.upper()

    # The scene follows the tour on the same server, as a reader runs them.
    out = run_steps(scene_steps(), server_process.target)
    assert len(out) >= 10
    failed = next(
        text
        for command, text in out.items()
        if command.startswith("callqos get calls/to-bob") and "again" not in command
    )
    assert "disconnected (qos-unavailable)" in failed
    again = next(text for command, text in out.items() if command.startswith("callqos get calls/to-bob-again"))
    assert "connected" in again and "rate=400,000B/s" in again and "rate=250,000B/s" in again
    offered = next(text for command, text in out.items() if command.startswith("callqos offers"))
    assert "offering" in offered and "recv controlled-load rate=400,000B/s" in offered and "from carol" in offered
    watched = next(text for command, text in out.items() if command.startswith("callqos watch --line"))
    assert [line.split()[3] for line in watched.strip().splitlines()] == [
        "CALL_OFFERED",
        "ADMISSION_FAILURE",
        "CALL_DISCONNECTED",
        "CALL_OFFERED",
        "QOS_GRANTED",
    ]


def test_the_scene_follows_the_tour() -> None:
    """The scene runs on the tour's server, so README.md reads them in that order."""
    headings = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("## ")]
    assert headings[headings.index(TOUR_HEADING) + 1] == SCENE_HEADING


def test_prompts_name_principals() -> None:
    steps = console_steps("$ callqos providers\nbob$ callqos offers\n# exits 18\ncarol$ callqos get calls/x\n")
    assert steps == [(None, "callqos providers", 0), ("bob", "callqos offers", 18), ("carol", "callqos get calls/x", 0)]
