"""Subcommands that other distributions add to ``callqos``, found through entry points.

A distribution registers a subcommand in the ``callqos.cli`` entry-point group, as
callqos-server does for ``callqos serve``::

    [project.entry-points."callqos.cli"]
    serve = "callqos.server.cli:main"

The entry point names a function ``main(argv, prog) -> int``: it gets every argument after the
subcommand's name, parses them itself (``prog`` is e.g. ``"callqos serve"``, for its usage lines)
and returns the exit status. ``callqos`` imports it only when that subcommand runs, so listing the
subcommands in ``callqos --help`` imports nothing of the distribution behind them.

The client depends on no such distribution; :data:`KNOWN` only names the project's own ones, so
that a missing one is reported as "install X" rather than as an unknown command.
"""

from __future__ import annotations

import sys
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

GROUP = "callqos.cli"


@dataclass(frozen=True)
class Known:
    """A subcommand one of the callqos distributions provides."""

    distribution: str
    help: str


#: The subcommands the callqos project's own distributions provide.
KNOWN: dict[str, Known] = {
    "serve": Known("callqos-server", "run the server"),
}

#: Exit status when a known subcommand's distribution is not installed (as for bad usage).
EXIT_NOT_INSTALLED = 2
#: Exit status when an installed subcommand cannot be loaded (a broken installation).
EXIT_BROKEN = 1


@dataclass(frozen=True)
class Subcommand:
    name: str
    help: str
    #: None for a known subcommand whose distribution is not installed.
    entry_point: EntryPoint | None


def discover(reserved: Collection[str]) -> list[Subcommand]:
    """The plugin subcommands, by name; names in `reserved` (the built-in commands) win."""
    found: dict[str, Subcommand] = {}
    for entry_point in entry_points(group=GROUP):
        if entry_point.name in reserved or entry_point.name in found:
            continue
        dist = entry_point.dist
        origin = f"{dist.name} {dist.version}" if dist is not None else entry_point.value
        known = KNOWN.get(entry_point.name)
        what = known.help if known is not None else "a plugin command"
        found[entry_point.name] = Subcommand(
            entry_point.name, f"{what} (from {origin}; see 'callqos {entry_point.name} --help')", entry_point
        )
    for name, known in KNOWN.items():
        if name not in found and name not in reserved:
            found[name] = Subcommand(name, f"{known.help} (needs {known.distribution}, not installed)", None)
    return sorted(found.values(), key=lambda sub: sub.name)


def run(subcommand: Subcommand, argv: Sequence[str]) -> int:
    """Run a plugin subcommand with the arguments that followed its name."""
    prog = f"callqos {subcommand.name}"
    if subcommand.entry_point is None:
        package = KNOWN[subcommand.name].distribution
        print(f"{prog}: {package} is not installed; install it with: pip install {package}", file=sys.stderr)
        return EXIT_NOT_INSTALLED
    try:
        main = subcommand.entry_point.load()
    except ImportError as exc:
        print(f"{prog}: cannot load {subcommand.entry_point.value}: {exc}", file=sys.stderr)
        return EXIT_BROKEN
    return int(main(list(argv), prog))
