"""`make profile`: where the server's CPU goes, sampled with py-spy from outside the process.

Starts the default server (SQLite, tracing off) as `make bench` does, drives one workload at it
from this process, and records the server with `py-spy record` (raw collapsed stacks) meanwhile.
Printed: the functions holding the most samples inclusively (the path) and by themselves (the
leaves), as a share of the samples in which the server was busy; the stacks are kept in `--out`
(`profile-WORKLOAD.txt`; `py-spy`'s flamegraph or speedscope can be made from the same run with
`--format`).

Workloads: make_drop (CreateCall + DropCall), renegotiate, get (GetCall), watch (1,000 watchers
and 20 events a second to all of them, from the load-generator processes of bench_watch.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import bench_watch
import programs
import workload

from callqos.server.testing import ServerProcess

WORKLOADS = ("make_drop", "renegotiate", "get", "watch")


def py_spy() -> str:
    found = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if found is None:
        raise SystemExit("py-spy is not installed: `make venv` installs it (the dev dependency group)")
    return found


async def drive(name: str, server: ServerProcess, seconds: float) -> None:
    if name == "watch":
        async with bench_watch.event_trigger(server, bare=False) as trigger:
            with tempfile.TemporaryDirectory(prefix="callqos-watchgen-") as tmp:
                kind = bench_watch.build_go_generator(Path(tmp))
                cpus = os.cpu_count() or 2
                await bench_watch.phase(server, kind, trigger, 1000, int(20 * seconds), 20.0, cpus)
        return
    load = {"make_drop": workload.make_drop, "renegotiate": workload.renegotiate, "get": workload.get}[name]
    await load(server.target, seconds)


async def profile(name: str, seconds: float, out: Path, rate: int, native: bool, floor: bool = False) -> Path:
    stacks = out / f"profile-{'floor-' if floor else ''}{name}.txt"
    with tempfile.TemporaryDirectory(prefix="callqos-profile-") as tmp:
        server = (
            ServerProcess(Path(tmp), program=programs.floor_program(), health_check=False)
            if floor
            else ServerProcess(
                Path(tmp), program=programs.callqos_program(), storage="sqlite", log_level="warning", max_watchers=2000
            )
        )
        async with server:
            command = [py_spy(), "record", "--pid", str(server.pid), "--format", "raw", "--nolineno"]
            command += ["--rate", str(rate), "--duration", str(int(seconds + 2)), "--output", str(stacks)]
            command += ["--native"] if native else ["--nonblocking"]
            recorder = subprocess.Popen(  # noqa: ASYNC220 -- started once, before the load
                command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            try:
                await drive(name, server, seconds)
            finally:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    recorder.wait(seconds + 30)
                if recorder.poll() is None:
                    recorder.kill()
                if recorder.returncode:
                    assert recorder.stderr is not None
                    raise SystemExit(f"py-spy failed: {recorder.stderr.read().decode()}")
    return stacks


def summarise(stacks: Path, top: int) -> str:
    inclusive: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in stacks.read_text().splitlines():
        path, _, count_text = line.rpartition(" ")
        if not path:
            continue
        count = int(count_text)
        frames = path.split(";")
        total += count
        leaves[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return f"{stacks}: no samples (was the server busy?)"
    lines = [f"{total} busy samples ({stacks})", "inclusive (the path):"]
    lines += [f"  {count / total:6.1%}  {frame}" for frame, count in inclusive.most_common(top)]
    lines.append("by itself (the leaves):")
    lines += [f"  {count / total:6.1%}  {frame}" for frame, count in leaves.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workload", choices=WORKLOADS, nargs="?", default="make_drop")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=200, help="samples per second")
    parser.add_argument("--native", action="store_true", help="include C frames (grpc core, sqlite, protobuf)")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument(
        "--floor",
        action="store_true",
        help="profile the floor server (bench.py) instead of callqos: what it cannot skip",
    )
    parser.add_argument("--out", type=Path, default=Path("."), help="directory for the collapsed stacks")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    stacks = asyncio.run(profile(args.workload, args.seconds, args.out, args.rate, args.native, args.floor))
    print(summarise(stacks, args.top))


if __name__ == "__main__":
    main()
