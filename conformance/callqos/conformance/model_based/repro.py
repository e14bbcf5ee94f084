"""A failing history as a runnable reproduction: `callqos` CLI commands (a shell script), with what the
target answered at each step and, at the failing one, the rule it broke."""

from __future__ import annotations

import json
import shlex

from google.protobuf import json_format

from callqos.conformance.model_based.ops import Burst, CallOp, Make, Op, Renegotiate, Restart, SetCapacity
from callqos.conformance.model_based.world import World
from callqos.conformance.rules import ST, FlowSpec, QosSpec, ServiceLevel

Level = ServiceLevel
CLI_LEVEL: dict[int, str] = {
    Level.SERVICE_LEVEL_NEEDED: "needed",
    Level.SERVICE_LEVEL_IF_AVAILABLE: "if-available",
    Level.SERVICE_LEVEL_BEST_EFFORT: "best-effort",
}
FLAGS = (
    ("token_rate_bytes_per_second", "rate"),
    ("token_bucket_size_bytes", "bucket"),
    ("peak_bandwidth_bytes_per_second", "peak"),
    ("latency_microseconds", "latency"),
    ("delay_variation_microseconds", "jitter"),
    ("max_sdu_size_bytes", "max-sdu"),
    ("minimum_policed_size_bytes", "min-policed"),
)


def direction_flags(prefix: str, spec: FlowSpec) -> list[str]:
    """`--send-type guaranteed --send-rate 100 …`; nothing for NO_CHANGE (the CLI keeps such a direction)."""
    if spec.service_type == ST.SERVICE_TYPE_NO_CHANGE:
        return []
    flags = [f"--{prefix}-type", ST.Name(spec.service_type).removeprefix("SERVICE_TYPE_").lower().replace("_", "-")]
    for name, flag in FLAGS:
        if spec.HasField(name):
            flags += [f"--{prefix}-{flag}", str(getattr(spec, name))]
    if spec.peak_bandwidth_unbounded:
        flags += [f"--{prefix}-peak", "unbounded"]
    return flags


def qos_flags(qos: QosSpec) -> list[str]:
    return direction_flags("send", qos.sending) + direction_flags("recv", qos.receiving)


def command(op: CallOp, world: World) -> str:
    call = f"m{op.call}-$R"
    if isinstance(op, Make):
        words = ["callqos", "make", f"sip:{call}@example.test", "--call-id", call]
        if op.level in CLI_LEVEL:
            words += ["--level", CLI_LEVEL[op.level]]
        return " ".join(_quote(words + qos_flags(op.qos)))
    if isinstance(op, Renegotiate):
        words = ["callqos", "renegotiate", f"calls/{call}"]
        if op.level in CLI_LEVEL:
            words += ["--level", CLI_LEVEL[op.level]]
        return " ".join(_quote(words + qos_flags(op.qos)))
    return f"callqos drop calls/{call}"


def _quote(words: list[str]) -> list[str]:
    return [word if "$R" in word else shlex.quote(word) for word in words]


def script(
    history: list[Op],
    world: World,
    *,
    header: str,
    observed: list[str],
    failure: str,
    offers: dict[int, QosSpec],
) -> str:
    """The shell script: the header (how to reach or start the target), one command per step with what the
    target answered, the failing step marked with the rule it broke, then the state that shows it."""
    lines = [header.rstrip(), "R=$RANDOM$RANDOM  # call ids unique to this run", ""]
    for index, op in enumerate(history):
        seen = [line for line in observed if line.startswith(f"step {index + 1}:")]
        if isinstance(op, Burst):
            lines.append("{ " + " & ".join(command(each, world) for each in op.ops) + " & wait; }  # at once")
        elif isinstance(op, SetCapacity):
            lines.append(f"callqos set-capacity {world.link} {op.capacity}")
        elif isinstance(op, Restart):
            lines.append("restart_server")
        else:
            lines.append(command(op, world))
            if index in offers and isinstance(op, Make | Renegotiate):
                lines += [f"#   {line.split(': ', 1)[1]}" for line in seen[:1]]
                seen = seen[1:]
                retry = f"m{op.call}r-$R"
                offer = json.dumps(json_format.MessageToDict(offers[index], preserving_proto_field_name=True))
                verb = (
                    f"callqos make sip:{retry}@example.test --call-id {retry}"
                    if isinstance(op, Make)
                    else f"callqos renegotiate calls/m{op.call}-$R"
                    + (f" --level {CLI_LEVEL[op.level]}" if op.level in CLI_LEVEL else "")
                )
                lines.append(f"{verb} --qos {shlex.quote(offer)}  # the counter-offer, at once")
        lines += [f"#   {line.split(': ', 1)[1]}" for line in seen]
    lines += [
        "",
        f"# FAILS: {failure}",
        f"callqos links --provider {world.provider} --json" if world.link else "callqos list --state connected --json",
    ]
    return "\n".join(lines) + "\n"
