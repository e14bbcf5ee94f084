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

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor

from callqos import wire
from callqos.client import Client, FileToken, ResumePolicy, errors, specs, tls_credentials
from callqos.client._channel import DEFAULT_TIMEOUT, env_principal, env_target
from callqos.v1 import flowspec_pb2

from . import completion, plugins, render

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
#: Added to the gRPC status code to make the exit status of a failed RPC.
EXIT_RPC_BASE = 10

_LEVELS = ["needed", "if-available", "best-effort"]
_SERVICE_TYPES = [
    specs.enum_label(flowspec_pb2.ServiceType, "SERVICE_TYPE_", n) for n in flowspec_pb2.ServiceType.values() if n
]


def unsigned(bits: int) -> Callable[[str], int]:
    """An argparse type: a whole number in 0 .. 2**bits - 1 (the range of the proto field). A bad
    value is reported by argparse with the flag's name: `argument --send-rate: -5 is out of range`."""
    limit = (1 << bits) - 1

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not 0 <= value <= limit:
            raise argparse.ArgumentTypeError(f"{value} is out of range (0-{limit})")
        return value

    parse.__name__ = f"uint{bits}"
    return parse


def _field_bits(field: str) -> int:
    """32 for a uint32 FlowSpec field, 64 for a uint64 one."""
    kind = flowspec_pb2.FlowSpec.DESCRIPTOR.fields_by_name[field].type
    return 32 if kind == FieldDescriptor.TYPE_UINT32 else 64


def seconds(text: str) -> float:
    """An argparse type: a positive number of seconds (the server says whether it is in range)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{value:g} is not a positive number of seconds")
    return value


def _peak(text: str) -> int | str:
    if text.lower() in ("unbounded", "inf", "infinity"):
        return specs.UNBOUNDED
    return unsigned(64)(text)


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
                type=_peak if f.flag == "peak" else unsigned(_field_bits(f.field)),
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


def _qos_args(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for make_call/renegotiate: `qos=` from --qos (or when provider-specific
    data is given), or `sending=`/`receiving=`. A direction without flags is left out, and the
    server applies the rule for an absent direction (conformance/SPEC.md FLOW-20): best effort in
    a new call, kept as it is in a renegotiation."""
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
    spec = flowspec_pb2.QosSpec(provider_specific=data)
    if sending is not None:
        spec.sending.CopyFrom(sending)
    if receiving is not None:
        spec.receiving.CopyFrom(receiving)
    return {"qos": spec}


def _asks_for_qos(args: argparse.Namespace) -> bool:
    """Whether any QoS flag was given (--send-*, --recv-*, --qos, --provider-specific)."""
    if args.qos is not None or args.provider_specific is not None:
        return True
    return any(
        getattr(args, f"{prefix}_{name}") is not None
        for prefix in ("send", "recv")
        for name in ["type", *(f.flag.replace("-", "_") for f in render.FLOW_FIELDS)]
    )


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
        lease=args.duration,
        **_qos_args(args),
    )
    _show_call(args, call)


def cmd_extend(client: Client, args: argparse.Namespace) -> None:
    call = client.extend(args.name, lease=args.duration, etag=args.etag, request_id=args.request_id)
    _show_call(args, call)


def cmd_get(client: Client, args: argparse.Namespace) -> None:
    _show_call(args, client.get_call(args.name))


def cmd_renegotiate(client: Client, args: argparse.Namespace) -> None:
    if args.level is None and not _asks_for_qos(args):
        raise _UsageError(
            "nothing to renegotiate: give the new QoS (--send-*, --recv-*, --qos or --provider-specific) or --level"
        )
    call = client.renegotiate(
        args.name,
        level=args.level,
        etag=args.etag,
        request_id=args.request_id,
        **_qos_args(args),
    )
    _show_call(args, call)


def cmd_drop(client: Client, args: argparse.Namespace) -> None:
    _show_call(args, client.drop(args.name, etag=args.etag))


def _reconnecting(error: errors.CallQosError, delay: float) -> None:
    """Said on stderr, so that a watch that has gone quiet says why (stdout stays the events)."""
    why = error.reason or error.code.name
    print(f"callqos watch: {why}: {error.message or 'stream broken'}; reconnecting in {delay:.1f}s", file=sys.stderr)


def cmd_watch(client: Client, args: argparse.Namespace) -> None:
    policy = ResumePolicy(give_up_after=args.give_up_after)
    stream = client.watch(
        args.after, call=args.call, line=args.line, types=args.type, resume=policy, on_reconnect=_reconnecting
    )
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
    calls = client.list_calls(state=args.state, provider=args.provider, line=args.line, page_size=args.page_size)
    _print_all(args, list(calls), render.calls_table)


# --- lines and incoming calls -----------------------------------------------------------------


def _show_line(args: argparse.Namespace, line: object) -> None:
    print(render.to_json(line) if args.json else render.line_text(line))  # type: ignore[arg-type]


def cmd_line_open(client: Client, args: argparse.Namespace) -> None:
    line = client.open_line(
        args.address, line_id=args.line_id, no_answer_timeout=args.no_answer_timeout, request_id=args.request_id
    )
    _show_line(args, line)


def cmd_line_close(client: Client, args: argparse.Namespace) -> None:
    _show_line(args, client.close_line(args.name, etag=args.etag))


def cmd_line_get(client: Client, args: argparse.Namespace) -> None:
    _show_line(args, client.get_line(args.name))


def cmd_line_list(client: Client, args: argparse.Namespace) -> None:
    lines = client.list_lines(state=args.state, address=args.address, owner=args.owner)
    _print_all(args, list(lines), render.lines_table)


def _my_line(client: Client, args: argparse.Namespace) -> str:
    """--line, or the one line the principal has open."""
    if args.line:
        return str(args.line)
    mine = list(client.list_lines(state="open", owner=client.principal or wire.ANONYMOUS_PRINCIPAL))
    if len(mine) != 1:
        have = ", ".join(line.name for line in mine) or "none"
        raise _UsageError(f"name the line with --line (open lines of this principal: {have})")
    return mine[0].name


def _offered_call(client: Client, args: argparse.Namespace) -> str:
    """The call named, or the one ringing longest on the line (--line, or the principal's own)."""
    if args.name:
        return str(args.name)
    line = _my_line(client, args)
    ringing = list(client.list_calls(state="offering", line=line))
    if not ringing:
        raise _UsageError(f"no call is ringing on {line}")
    return ringing[-1].name  # the list is newest first


def cmd_offers(client: Client, args: argparse.Namespace) -> None:
    policy = ResumePolicy(give_up_after=args.give_up_after)
    seen = 0
    with client.offers(_my_line(client, args), after_sequence=args.after, resume=policy) as offers:
        for call in offers:
            print(render.to_json(call) if args.json else render.call_text(call), flush=True)
            seen += 1
            if args.count and seen >= args.count:
                break


def cmd_answer(client: Client, args: argparse.Namespace) -> None:
    # No QoS flag at all: the offer as it is; a direction without flags: as offered.
    qos = _qos_args(args)
    call = client.answer(_offered_call(client, args), etag=args.etag, request_id=args.request_id, **qos)
    _show_call(args, call)


def cmd_reject(client: Client, args: argparse.Namespace) -> None:
    _show_call(args, client.reject(_offered_call(client, args), etag=args.etag, request_id=args.request_id))


def cmd_providers(client: Client, args: argparse.Namespace) -> None:
    providers = [client.get_provider(args.name)] if args.name else list(client.list_providers())
    _print_all(args, providers, render.providers_table)


def cmd_links(client: Client, args: argparse.Namespace) -> None:
    _print_all(args, list(client.list_links(args.provider)), render.links_table)


def cmd_set_capacity(client: Client, args: argparse.Namespace) -> None:
    """UpdateLink, then which calls it shed: the response lists every call the provider degraded or
    disconnected to make the new capacity hold."""
    answer = client.update_link_capacity(args.link, args.capacity)
    if args.json:
        print(render.to_json(answer))
        return
    render.links_table([answer.link], sys.stdout)
    print(render.shed_text(answer.changes))


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
        "--tls-ca",
        default=default(os.environ.get(wire.TLS_CA_ENV) or None),
        help=f"CA certificate(s) of the server (PEM); turns TLS on (env {wire.TLS_CA_ENV})",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        default=default(False),
        help="TLS with the system's CA certificates (implied by --tls-ca)",
    )
    parser.add_argument(
        "--tls-cert",
        default=default(os.environ.get(wire.TLS_CERT_ENV) or None),
        help=f"client certificate (PEM), for mTLS (env {wire.TLS_CERT_ENV})",
    )
    parser.add_argument(
        "--tls-key",
        default=default(os.environ.get(wire.TLS_KEY_ENV) or None),
        help=f"the client certificate's key (PEM) (env {wire.TLS_KEY_ENV})",
    )
    parser.add_argument(
        "--token",
        default=default(os.environ.get(wire.TOKEN_ENV) or None),
        help=f"bearer token sent with every request (env {wire.TOKEN_ENV})",
    )
    parser.add_argument(
        "--token-file",
        default=default(os.environ.get(wire.TOKEN_FILE_ENV) or None),
        help=f"file holding the bearer token, re-read when it changes (env {wire.TOKEN_FILE_ENV})",
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
        description=(
            "Quality of Service for calls: make calls with flowspecs, renegotiate, drop, and watch QoS events; "
            "open lines and answer the calls made to them."
        ),
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
    p.add_argument(
        "--duration",
        type=seconds,
        metavar="SECONDS",
        help="a lease: the call ends (lease-expired) unless extended within it (callqos extend); "
        "default: the server's maximum lease, or none",
    )
    _add_flowspec_flags(p, "best effort")

    p = command("get", cmd_get, "show a call")
    p.add_argument("name", help="calls/{call} or {call}")

    p = command("list", cmd_list, "list calls, newest first")
    p.add_argument("--state", choices=["connected", "disconnected", "offering", "ringback"])
    p.add_argument("--provider")
    p.add_argument("--line", help="only calls offered on this line (lines/{line})")
    p.add_argument("--page-size", type=unsigned(31), help="calls fetched per request")

    p = command("renegotiate", cmd_renegotiate, "change the QoS of a connected call")
    p.add_argument("name", help="calls/{call} or {call}")
    p.add_argument("--level", choices=_LEVELS, help="a new service level")
    p.add_argument("--etag", help="fail with ETAG_MISMATCH if the call changed since")
    p.add_argument("--request-id", help="idempotency key (default: a fresh UUID)")
    _add_flowspec_flags(p, "kept as it is (no-change)")

    p = command("drop", cmd_drop, "drop a call and release its reservation")
    p.add_argument("name", help="calls/{call} or {call}")
    p.add_argument("--etag", help="fail with ETAG_MISMATCH if the call changed since")

    p = command("extend", cmd_extend, "extend a call's lease: it then ends its lease's length from now")
    p.add_argument("name", help="calls/{call} or {call}")
    p.add_argument("--duration", type=seconds, metavar="SECONDS", help="a new lease length (default: the call's own)")
    p.add_argument("--etag", help="fail with ETAG_MISMATCH if the call changed since")
    p.add_argument("--request-id", help="idempotency key (default: a fresh UUID)")

    p = sub.add_parser("line", help="open, close, show and list lines", description="lines: receive calls")
    _add_common(p, top=False)
    line_sub = p.add_subparsers(dest="line_command", required=True, metavar="LINE-COMMAND")

    def line_command(
        name: str, func: Callable[[Client, argparse.Namespace], None], help_text: str
    ) -> argparse.ArgumentParser:
        q = line_sub.add_parser(name, help=help_text, description=help_text)
        _add_common(q, top=False)
        q.set_defaults(func=func)
        return q

    q = line_command("open", cmd_line_open, "open a line: calls to its address ring here (lineOpen)")
    q.add_argument("address", help="the address calls are made to (e.g. sip:bob@example.test)")
    q.add_argument("--line-id", help="the {line} in lines/{line} (default: server UUID)")
    q.add_argument("--no-answer-timeout", type=float, metavar="SECONDS", help="how long a call rings (1-600)")
    q.add_argument("--request-id", help="idempotency key (default: a fresh UUID)")
    q = line_command("close", cmd_line_close, "close a line: calls still ringing on it end no-answer")
    q.add_argument("name", help="lines/{line} or {line}")
    q.add_argument("--etag", help="fail with ETAG_MISMATCH if the line changed since")
    q = line_command("get", cmd_line_get, "show a line")
    q.add_argument("name", help="lines/{line} or {line}")
    q = line_command("list", cmd_line_list, "list lines, newest first")
    q.add_argument("--state", choices=["open", "closed"])
    q.add_argument("--address")
    q.add_argument("--owner")

    line_help = "lines/{line} (default: the one line this principal has open)"
    p = command("offers", cmd_offers, "show the calls ringing on a line, then each new one as it is offered")
    p.add_argument("--line", help=line_help)
    p.add_argument("--after", type=unsigned(64), metavar="N", help="resume after event sequence N instead")
    p.add_argument("--count", type=unsigned(31), metavar="N", help="stop after N calls")
    p.add_argument(
        "--give-up-after",
        type=float,
        default=ResumePolicy.give_up_after,
        metavar="SECONDS",
        help="stop when the server stays unreachable this long (default %(default)s)",
    )

    p = command("answer", cmd_answer, "answer a ringing call, with the QoS offered or less (lineAnswer)")
    p.add_argument("name", nargs="?", help="calls/{call} (default: the call ringing longest on the line)")
    p.add_argument("--line", help=line_help)
    p.add_argument("--etag", help="fail with ETAG_MISMATCH if the call changed since")
    p.add_argument("--request-id", help="idempotency key (default: a fresh UUID)")
    _add_flowspec_flags(p, "kept as offered")

    p = command("reject", cmd_reject, "reject a ringing call")
    p.add_argument("name", nargs="?", help="calls/{call} (default: the call ringing longest on the line)")
    p.add_argument("--line", help=line_help)
    p.add_argument("--etag", help="fail with ETAG_MISMATCH if the call changed since")
    p.add_argument("--request-id", help="idempotency key (default: a fresh UUID)")

    p = command("watch", cmd_watch, "follow QoS events; resumes after server restarts")
    p.add_argument(
        "--after",
        type=unsigned(64),
        metavar="N",
        help="replay events after sequence N first (0: all retained); default: new events only",
    )
    p.add_argument("--call", help="only this call's events")
    p.add_argument("--line", help="only the events of calls offered on this line (lines/{line})")
    p.add_argument(
        "--type",
        action="append",
        metavar="TYPE",
        help="only events of this type (repeatable), e.g. qos-changed",
    )
    p.add_argument("--count", type=unsigned(31), metavar="N", help="stop after N events")
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
    p.add_argument("capacity", type=unsigned(64), help="bytes/s per direction")

    p = sub.add_parser(
        "completion",
        help="print a shell completion script: source <(callqos completion bash)",
        description="Print a completion script for bash (zsh: run `autoload -U bashcompinit && bashcompinit` first).",
    )
    p.add_argument("shell", choices=completion.SHELLS)
    p.set_defaults(completion=True)

    # Subcommands of other distributions (`serve` from callqos-server): they parse their own
    # arguments, so they get everything after their name.
    for plugin in plugins.discover(reserved=sub.choices):
        sub.add_parser(plugin.name, help=plugin.help, add_help=False).set_defaults(plugin=plugin)
    return parser


def _credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    """TLS when asked for (--tls, --tls-ca, or a client certificate), else plaintext."""
    if not (args.tls or args.tls_ca or args.tls_cert):
        return None
    try:
        return tls_credentials(args.tls_ca, args.tls_cert, args.tls_key)
    except OSError as exc:
        raise _UsageError(f"cannot read {exc.filename}: {exc.strerror}") from exc


def _client(args: argparse.Namespace) -> Client:
    """A client as the flags (and the environment) say: target, principal, TLS, token."""
    return Client(
        args.target,
        principal=args.principal,
        timeout=args.timeout,
        credentials=_credentials(args),
        token=args.token or (FileToken(args.token_file) if args.token_file else None),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``callqos`` console script and ``python -m callqos.cli``."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    plugin: plugins.Subcommand | None = getattr(args, "plugin", None)
    if plugin is not None:
        return plugins.run(plugin, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if getattr(args, "completion", False):
        print(completion.script(parser, args.shell))
        return 0
    try:
        with _client(args) as client:
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
