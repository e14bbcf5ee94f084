"""The README's one-minute tour, run as written against a real server."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from server_testkit import ROOT


def tour_steps() -> list[tuple[str, int]]:
    """(command, expected exit status) for each `$ callqos …` line of the tour block; a
    following `# exits N` line gives a non-zero status."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## A one-minute tour", 1)[1].split("```console", 1)[1].split("```", 1)[0]
    steps: list[tuple[str, int]] = []
    for line in block.strip().splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], 0))
        elif (match := re.match(r"# exits (\d+)", line)) and steps:
            steps[-1] = (steps[-1][0], int(match.group(1)))
    return steps


def test_tour_runs_as_written(server_process, tmp_path: Path) -> None:
    server_process.start()
    callqos = Path(sys.executable).parent / "callqos"
    env = {**os.environ, "CALLQOS_TARGET": server_process.target}
    steps = tour_steps()
    assert len(steps) >= 10
    for command, expected in steps:
        argv = shlex.split(command)
        assert argv[0] == "callqos"
        result = subprocess.run([str(callqos), *argv[1:]], env=env, capture_output=True, text=True, timeout=30)
        assert result.returncode == expected, f"{command}\n{result.stdout}\n{result.stderr}"
        assert result.stdout.strip() or result.stderr.strip(), f"{command} printed nothing"
    listed = subprocess.run([str(callqos), "get", "calls/carol"], env=env, capture_output=True, text=True)
    assert "qos-unavailable" in listed.stdout or "QOS_UNAVAILABLE" in listed.stdout.upper()
