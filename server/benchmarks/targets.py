"""The performance targets (issue #17) and how a measurement is judged against them.

Each benchmark script reports the rows it measures with PASS or FAIL (a benchmark never fails the
build: `make bench` always exits 0 when the benchmarks ran), and, given `--results FILE`, appends
them there as JSON lines; `python targets.py FILE` (the last step of `make bench`) prints the
whole table from that file. Ratios are to the bare grpc.aio echo server measured in the same run.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Target:
    key: str
    label: str
    bound: float
    higher_is_better: bool  # True: the figure must be >= bound; False: <= bound
    unit: str  # how the figure and the bound are printed: "ratio", "%", "ms", "KiB", "count"

    def met(self, figure: float) -> bool:
        return figure >= self.bound if self.higher_is_better else figure <= self.bound

    def show(self, figure: float) -> str:
        if self.unit == "ratio":
            return f"{figure:.2f}"
        if self.unit == "%":
            return f"{figure:.0%}"
        if self.unit == "count":
            return f"{figure:,.0f}"
        return f"{figure:.1f} {self.unit}"

    def wanted(self) -> str:
        return f"{'≥' if self.higher_is_better else '≤'} {self.show(self.bound)}"


TARGETS = {
    target.key: target
    for target in (
        Target("make_drop", "CreateCall + DropCall, tracing off", 0.80, True, "ratio"),
        Target("make_drop_sampled", "CreateCall + DropCall, tracing at 10% sampling", 0.60, True, "ratio"),
        Target("renegotiate", "RenegotiateCall", 0.65, True, "ratio"),
        Target("get", "GetCall", 0.90, True, "ratio"),
        Target("tracing_sampled", "tracing overhead at 10% sampling", 0.10, False, "%"),
        Target("tracing_all", "tracing overhead at 100% sampling", 0.30, False, "%"),
        Target("watch_p99", "1,000 watchers, one event to all: p99 delivery", 50.0, False, "ms"),
        Target("watch_memory", "server memory per open watcher", 20.0, False, "KiB"),
        Target("watch_open_failed", "10,000 watchers opened at once: not opened", 0, False, "count"),
    )
}


@dataclass(frozen=True)
class Row:
    """One judged measurement: the figure the target is judged on and, for a noisy machine, the
    range it took over the rounds of the same run."""

    key: str
    figure: float
    low: float
    high: float
    note: str = ""

    def line(self) -> str:
        target = TARGETS[self.key]
        spread = "" if self.low == self.high else f" (rounds {target.show(self.low)}-{target.show(self.high)})"
        verdict = "PASS" if target.met(self.figure) else "FAIL"
        text = f"{target.label:<66}{target.show(self.figure):>10}{spread:<22} target {target.wanted():<10} {verdict}"
        return text + (f"  {self.note}" if self.note else "")


def report(rows: list[Row], results: Path | None) -> str:
    """The rows as lines; appended to `results` (JSON lines) when given."""
    if results is not None:
        with results.open("a") as out:
            for row in rows:
                out.write(json.dumps(asdict(row)) + "\n")
    return "\n".join(row.line() for row in rows)


def summary(results: Path) -> str:
    """Every target in the table's order, with the latest row measured for it (or 'not measured')."""
    rows: dict[str, Row] = {}
    if results.exists():
        for line in results.read_text().splitlines():
            if line.strip():
                row = Row(**json.loads(line))
                rows[row.key] = row
    lines = ["targets (issue #17), ratios to the bare grpc.aio echo of the same run:"]
    for key, target in TARGETS.items():
        lines.append(rows[key].line() if key in rows else f"{target.label:<66}{'not measured':>10}")
    passed = sum(TARGETS[key].met(row.figure) for key, row in rows.items())
    lines.append(f"{passed} of {len(TARGETS)} targets met")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", type=Path, help="the JSON lines the benchmarks appended")
    print(summary(parser.parse_args().results))


if __name__ == "__main__":
    main()
