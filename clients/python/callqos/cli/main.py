"""The ``callqos`` command: make and manage calls, watch QoS events; ``callqos serve`` and any other
subcommand of another distribution come through :mod:`callqos.cli.plugins`.

Exit status: 0 on success, 2 for bad usage, 10 + the gRPC status code for a failed RPC
(e.g. 18 for RESOURCE_EXHAUSTED / QOS_UNAVAILABLE, 15 for NOT_FOUND), 1 for anything else,
130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

# Before grpc is imported (by the client below): gRPC core's own INFO lines (e.g. one per client
# GOAWAY seen by `callqos serve`) are neither JSON nor actionable; GRPC_VERBOSITY=INFO restores them.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from google.protobuf import json_format

from callqos import wire
from callqos.client import Client, ResumePolicy, errors, specs
from callqos.client._channel import DEFAULT_TIMEOUT, env_principal, env_target
from callqos.v1 import flowspec_pb2

from . import plugins, render

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
#: Added to the gRPC status code to make the exit status of a failed RPC.
EXIT_RPC_BASE = 10

_LEVELS = ["needed", "if-available", "best-effort"]
_SERVICE_TYPES = [
    specs.enum_label(flowspec_pb2.ServiceType, "SERVICE_TYPE_", n) for n in flowspec_pb2.ServiceType.values() if n
]


def _peak(text: str) -> int | str:
    if text.lower() in ("unbounded", "inf", "infinity"):
        return specs.UNBOUNDED
    return int(text)


def _add_flowspec_flags(parser: argparse.ArgumentParser, unset: str) -> None:
    group = parser.add_argument_group(
        "QoS",
        f"One flowspec per direction (--send-*, --recv-*); a direction with no flags is {unset}.",
    )
    for prefix, what in (("send", "sending"), ("recv", "receiving")):
        group.add_argument(
            f"--{prefix}-type",
            choices=_SERVICE_TYPES,
            metavar="TYPE",
            help=f"{what} service type: {', '.join(_SERVICE_TYPES)}",
        )
        for f in render.FLOW_FIELDS:
            group.add_argument(
                f"--{prefix}-{f.flag}",
                type=_peak if f.flag == "peak" else int,
                metavar="N",
                help=f"{what} {f.help}",
            )
    group.add_argument(
        "--qos",
        metavar="JSON",
        help="the whole QosSpec as proto3 JSON (or @FILE), e.g. a counter-offer from --json",
    )
    group.add_argument(
        "--provider-specific",
        metavar="TEXT",
        help="provider-specific data as UTF-8 text (or @FILE for its bytes), e.g. a linux-tc filter",
    )


def _flowspec(args: argparse.Namespace, prefix: str) -> flowspec_pb2.FlowSpec | None:
    kind = getattr(args, f"{prefix}_type")
    values = {f.keyword: getattr(args, f"{prefix}_{f.flag.replace('-', '_')}") for f in render.FLOW_FIELDS}
    given = {k: v for k, v in values.items() if v is not None}
    if kind is None:
        if given:
            raise _UsageError(f"--{prefix}-type is required with the other --{prefix}-* flags")
        return None
    return specs.flowspec(kind, **given)


def _provider_specific(args: argparse.Namespace) -> bytes | None:
    text: str | None = args.provider_specific
    if text is None:
        return None
    if text.startswith("@"):
        with open(text[1:], "rb") as handle:
            return handle.read()
    return text.encode("utf-8")


def _qos_args(args: argparse.Namespace, unset: flowspec_pb2.FlowSpec) -> dict[str, Any]:
    """Keyword arguments for make_call/renegotiate: `qos=` from --qos (or when provider-specific
    data is given), or `sending=`/`receiving=`. `unset` is what a direction without flags gets."""
    data = _provider_specific(args)
    if args.qos:
        text = args.qos
        if text.startswith("@"):
            with open(text[1:], encoding="utf-8") as handle:
                text = handle.read()
        try:
            spec = json_format.Parse(text, flowspec_pb2.QosSpec())
        except json_format.ParseError as exc:
            raise _UsageError(f"--qos: {exc}") from None
        if data is not None:
            spec.provider_specific = data
        return {"qos": spec}
    sending, receiving = _flowspec(args, "send"), _flowspec(args, "recv")
    if data is None:
        return {"sending": sending, "receiving": receiving}
    return {
        "qos": flowspec_pb2.QosSpec(
            sending=sending if sending is not None else unset,
            receiving=receiving if receiving is not None else unset,
            provider_specific=data,
        )
    }


class _UsageError(Exception):
    pass


# --- commands ---------------------------------------------------------------------------------


def _show_call(args: argparse.Namespace, call: object) -> None:
    print(render.to_json(call) if args.json else render.call_text(call))  # type: ignore[arg-type]


def cmd_make(client: Client, args: argparse.Namespace) -> None:
    call = client.make_call(
        args.destination,
        level=args.level,
        provider=args.provider,
        call_id=args.call_id,
        request_id=args.request_id,
        **_qos_args(args, specs.best_effort()),
    )
    _show_call(args, call)


def cmd_get(client: Client, args: argparse.Namespace) -> None:
    _show_call(args, client.get_call(args.name))


def cmd_renegotiate(client: Client, args: argparse.Namespace) -> None:
    call = client.renegotiate(
        args.name,
        level=args.level,
        etag=args.etag,
        request_id=args.request_id,
        **_qos_args(args, specs.no_change()),
    )
    _show_call(args, call)


def cmd_drop(client: Client, args: argparse.Namespace) -> None:
    _show_call(args, client.drop(args.name, etag=args.etag))


def cmd_watch(client: Client, args: argparse.Namespace) -> None:
    policy = ResumePolicy(give_up_after=args.give_up_after)
    stream = client.watch(args.after, call=args.call, types=args.type, resume=policy)
    seen = 0
    with stream:
        for event in stream:
            # Flushed per line, so a pipe (or a test) sees each event as it happens.
            print(render.to_json(event) if args.json else render.event_text(event), flush=True)
            seen += 1
            if args.count and seen >= args.count:
                break


def _print_all(args: argparse.Namespace, items: Sequence[Any], show_table: Callable[..., None]) -> None:
    if args.json:
        for item in items:
            print(render.to_json(item))
    else:
        show_table(items, sys.stdout)


def cmd_list(client: Client, args: argparse.Namespace) -> None:
    calls = client.list_calls(state=args.state, provider=args.provider, page_size=args.page_size)
    _print_all(args, list(calls), render.calls_table)


def cmd_providers(client: Client, args: argparse.Namespace) -> None:
    providers = [client.get_provider(args.name)] if args.name else list(client.list_providers())
    _print_all(args, providers, render.providers_table)


def cmd_links(client: Client, args: argparse.Namespace) -> None:
    _print_all(args, list(client.list_links(args.provider)), render.links_table)


def cmd_set_capacity(client: Client, args: argparse.Namespace) -> None:
    answer = client.update_link_capacity(args.link, args.capacity)
    if args.json:
        print(render.to_json(answer))
        return
    render.links_table([answer.link], sys.stdout)
    if answer.changes:
        print()
        render.link_changes_table(answer.changes, sys.stdout)


# --- parser -----------------------------------------------------------------------------------


def _add_common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # The same options are accepted before and after the command. On the sub-parsers their
    # default is SUPPRESS, so an option given before the command is not reset by the
    # sub-parser's default.
    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    parser.add_argument(
        "--target",
        default=default(env_target()),
        help=f"server host:port (env {wire.TARGET_ENV}; default {wire.DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--principal",
        default=default(env_principal()),
        help=f"identity sent as {wire.PRINCIPAL_HEADER} (env {wire.PRINCIPAL_ENV})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=default(DEFAULT_TIMEOUT),
        help="deadline of each request, seconds",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print proto3 JSON (one object per line) instead of text",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="callqos",
        description="Quality of Service for calls: make calls with flowspecs, renegotiate, drop, and watch QoS events.",
        epilog="Failed requests exit with 10 + the gRPC status code.",
    )
    parser.add_argument("--version", action="version", version=f"callqos {metadata.version('callqos')}")
    _add_common(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, func: Callable[[Client, argparse.Namespace], None], help_text: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _add_common(p, top=False)
        p.set_defaults(func=func)
        return p

    p = command("make", cmd_make, "make a call with the QoS it needs")
    p.add_argument("destination", help="where the call goes (e.g. sip:bob@example.com)")
    p.add_argument("--level", choices=_LEVELS, help="service level (server default: needed)")
    p.add_argument("--provider", help="providers/{provider} (default: the default provider)")
    p.add_argument("--call-id", help="the {call} in calls/{call} (default: server UUID)")
    p.add_argument("--request-id", help="idempotency key (default: a fresh UUID)")
    _add_flowspec_flags(p, "best effort")

    p = command("get", cmd_get, "show a call")
    p.add_argument("name", help="calls/{call} or {call}")

    p = command("list", cmd_list, "list calls, newest first")
    p.add_argument("--state", choices=["connected", "disconnected"])
    p.add_argument("--provider")
    p.add_argument("--page-size", type=int, help="calls fetched per request")

    p = command("renegotiate", cmd_renegotiate, "change the QoS of a connected call")
    p.add_argument("name", help="calls/{call} or {call}")
    p.add_argument("--level", choices=_LEVELS, help="a new service level")
    p.add_argument("--etag", help="fail with ETAG_MISMATCH if the call changed since")
    p.add_argument("--request-id", help="idempotency key (default: a fresh UUID)")
    _add_flowspec_flags(p, "kept as it is (no-change)")

    p = command("drop", cmd_drop, "drop a call and release its reservation")
    p.add_argument("name", help="calls/{call} or {call}")
    p.add_argument("--etag", help="fail with ETAG_MISMATCH if the call changed since")

    p = command("watch", cmd_watch, "follow QoS events; resumes after server restarts")
    p.add_argument(
        "--after",
        type=int,
        metavar="N",
        help="replay events after sequence N first (0: all retained); default: new events only",
    )
    p.add_argument("--call", help="only this call's events")
    p.add_argument(
        "--type",
        action="append",
        metavar="TYPE",
        help="only events of this type (repeatable), e.g. qos-changed",
    )
    p.add_argument("--count", type=int, metavar="N", help="stop after N events")
    p.add_argument(
        "--give-up-after",
        type=float,
        default=ResumePolicy.give_up_after,
        metavar="SECONDS",
        help="stop when the server stays unreachable this long (default %(default)s, the clients' resume policy)",
    )

    p = command("providers", cmd_providers, "list providers and their capabilities")
    p.add_argument("name", nargs="?", help="show only this provider")

    p = command("links", cmd_links, "list a provider's links and their reservations")
    p.add_argument("--provider", help="providers/{provider} (default: the default provider)")

    p = command("set-capacity", cmd_set_capacity, "change a link's capacity (UpdateLink)")
    p.add_argument("link", help="providers/{provider}/links/{link}")
    p.add_argument("capacity", type=int, help="bytes/s per direction")

    # Subcommands of other distributions (`serve` from callqos-server): they parse their own
    # arguments, so they get everything after their name.
    for plugin in plugins.discover(reserved=sub.choices):
        sub.add_parser(plugin.name, help=plugin.help, add_help=False).set_defaults(plugin=plugin)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``callqos`` console script and ``python -m callqos.cli``."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    plugin: plugins.Subcommand | None = getattr(args, "plugin", None)
    if plugin is not None:
        return plugins.run(plugin, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        with Client(args.target, principal=args.principal, timeout=args.timeout) as client:
            args.func(client, args)
    except errors.CallQosError as exc:
        if args.json:
            print(json.dumps(render.error_dict(exc)), file=sys.stderr)
        else:
            print(render.error_text(exc), file=sys.stderr)
        code_number: int = exc.code.value[0]
        return EXIT_RPC_BASE + code_number
    except (_UsageError, ValueError) as exc:
        print(f"callqos {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `callqos watch | head`: the reader went away; not an error of ours.
        sys.stderr.close()
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
