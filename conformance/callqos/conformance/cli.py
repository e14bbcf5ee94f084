"""`callqos-conformance`: certify a provider (`--provider`) or a server (`--target`); `list`
prints every check, `rules` every clause of SPEC.md with its level, why, and its checks."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from callqos.conformance.checks import all_checks
from callqos.conformance.connection import Connection
from callqos.conformance.model import PROFILES, RunOptions
from callqos.conformance.reports import console
from callqos.conformance.runner import run_conformance
from callqos.conformance.target import TargetError, require_server
from callqos.conformance.version import SPEC_DOCUMENT, SPEC_VERSION, SUITE_VERSION
from callqos.wire import TOKEN_ENV


def _ids(values: list[str]) -> tuple[str, ...]:
    out: list[str] = []
    for value in values:
        if value.startswith("@"):  # a file of ids, one a line, # comments
            lines = Path(value[1:]).read_text().splitlines()
            out += [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]
        else:
            out += [v.strip() for v in value.split(",") if v.strip()]
    return tuple(out)


def list_checks(profiles: tuple[str, ...]) -> str:
    rows = [
        f"{c.id:14} {c.level.value:6} {c.profile:15} {c.title}\n{'':37}spec: {', '.join(c.clauses)} ({c.source})"
        + (f"\n{'':37}needs: {', '.join(c.needs)}" if c.needs else "")
        for c in all_checks()
        if not profiles or c.profile in profiles
    ]
    return (
        "\n".join(rows)
        + f"\n{len(rows)} checks (suite {SUITE_VERSION}, spec {SPEC_VERSION}: clauses of {SPEC_DOCUMENT})"
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="callqos-conformance", description="Certify a callqos provider or server.")
    p.add_argument(
        "--version", action="version", version=f"callqos-conformance {metadata.version('callqos-conformance')}"
    )
    p.add_argument("command", nargs="?", choices=("run", "list", "rules"), default="run")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--target", help="HOST:PORT of a running callqos server (any language)")
    where.add_argument("--provider", help="entry-point name or module:Class: host it in a spawned server")
    where.add_argument(
        "--provider-command",
        help="a provider program speaking callqos.provider.v1 (any language), e.g. './my-provider --flag': "
        "a spawned server launches it",
    )
    where.add_argument(
        "--provider-endpoint",
        help="unix:///path or HOST:PORT of a running callqos.provider.v1 provider: a spawned server dials it",
    )
    p.add_argument("--target-provider", help="providers/{id} to certify on --target (default: the server's default)")
    p.add_argument(
        "--provider-settings",
        type=Path,
        help="TOML file: the provider's settings table (for --provider; for --provider-command/--provider-endpoint "
        "the remote provider's: env, tls, timeouts)",
    )
    p.add_argument("--parameters", type=Path, help="TOML test parameters (feasible/infeasible flowspecs, capacity)")
    p.add_argument(
        "--profile", action="append", default=[], choices=PROFILES, help="run only this profile (repeatable)"
    )
    p.add_argument(
        "--check",
        action="append",
        default=[],
        help="run only these check ids or id prefixes (comma-separated, repeatable)",
    )
    p.add_argument(
        "--known-failing",
        action="append",
        default=[],
        help="check ids expected to fail (comma-separated or @file); an unexpected pass fails the run",
    )
    p.add_argument("--seed", type=int, help="seed for check order and generated values")
    p.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every deadline (slow providers)")
    p.add_argument(
        "--provider-timeout", type=float, default=2.0, help="server-side provider deadline for --provider, seconds"
    )
    p.add_argument("--output-dir", type=Path, help="write summary.txt, junit.xml, report.json, report.md here")
    p.add_argument(
        "--budget",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="seconds of model-based histories (MODEL-001; default 20): longer runs for certification",
    )
    p.add_argument(
        "--histories", type=int, default=0, metavar="N", help="run exactly N model-based histories, whatever the time"
    )
    secure = p.add_argument_group("connecting to a --target with TLS and authentication")
    secure.add_argument("--tls-ca", type=Path, help="CA certificate(s) of the server (PEM): TLS on")
    secure.add_argument("--tls-cert", type=Path, help="client certificate (PEM), for mTLS")
    secure.add_argument("--tls-key", type=Path, help="the client certificate's key (PEM)")
    secure.add_argument(
        "--token", default=os.environ.get(TOKEN_ENV) or None, help=f"bearer token of the suite (env {TOKEN_ENV})"
    )
    secure.add_argument(
        "--intruder-token", help="bearer token of a second principal of the same tenant, for the ownership checks"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "list":
        print(list_checks(tuple(args.profile)))
        return 0
    if args.command == "rules":
        from callqos.conformance.rulemap import render, rule_map

        print(render(rule_map()))
        return 0
    if args.budget < 0 or args.histories < 0:
        print("--budget and --histories must not be negative", file=sys.stderr)
        return 2
    settings = {}
    if args.provider_settings:
        settings = tomllib.loads(args.provider_settings.read_text())
    if args.timeout_scale <= 0:
        print("--timeout-scale must be positive", file=sys.stderr)
        return 2
    hosting = "--provider-command" if args.provider_command else "--provider-endpoint" if args.provider_endpoint else ""
    if args.provider or hosting:
        try:
            require_server(hosting or "--provider")  # a one-line answer, before any report is written
        except TargetError as exc:
            print(f"callqos-conformance: {exc}", file=sys.stderr)
            return 2
    report = run_conformance(
        RunOptions(
            target=args.target,
            provider=args.provider,
            connection=Connection(args.tls_ca, args.tls_cert, args.tls_key, args.token, args.intruder_token),
            provider_command=tuple(shlex.split(args.provider_command or "")),
            provider_endpoint=args.provider_endpoint or "",
            target_provider=args.target_provider,
            provider_settings=settings,
            parameters_file=args.parameters,
            profiles=tuple(args.profile),
            checks=_ids(args.check),
            known_failing=_ids(args.known_failing),
            seed=args.seed,
            timeout_scale=args.timeout_scale,
            output_dir=args.output_dir,
            provider_timeout=args.provider_timeout,
            budget_seconds=args.budget,
            histories=args.histories,
        )
    )
    print(console(report))
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
