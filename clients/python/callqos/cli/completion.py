"""Shell completion for ``callqos``: ``source <(callqos completion bash)``.

The script is generated from the argument parser itself — its subcommands, each one's options,
and the values of options with fixed choices (service types, levels, states) — so it cannot
drift from the command. zsh runs it through ``bashcompinit``. No dependency: argcomplete would
re-run Python on every <Tab>; this is a plain bash function.
"""

from __future__ import annotations

import argparse
import shlex

SHELLS = ("bash", "zsh")


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return sorted(option for action in parser._actions for option in action.option_strings)


def _valued(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """Options that take a value → their fixed choices (empty when any value goes)."""
    found: dict[str, list[str]] = {}
    for action in parser._actions:
        if action.option_strings and action.nargs != 0:
            for option in action.option_strings:
                found[option] = [str(choice) for choice in action.choices or ()]
    return found


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _words(items: list[str]) -> str:
    return shlex.quote(" ".join(items))


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """A bash completion function for `parser` (for zsh, with bashcompinit loaded first)."""
    commands = _subcommands(parser)
    valued: dict[str, list[str]] = dict(_valued(parser))
    for sub in commands.values():
        valued.update(_valued(sub))
    value_cases = [
        f'    {option}) COMPREPLY=($(compgen -W {_words(choices)} -- "$cur")); return;;'
        for option, choices in sorted(valued.items())
        if choices
    ]
    free_values = sorted(option for option, choices in valued.items() if not choices)
    command_cases = []
    for name, sub in sorted(commands.items()):
        words = _options(sub)
        for action in sub._actions:  # positional choices (e.g. `completion bash`)
            if not action.option_strings and action.choices and not isinstance(action, argparse._SubParsersAction):
                words += [str(choice) for choice in action.choices]
        command_cases.append(f'    {name}) COMPREPLY=($(compgen -W {_words(words)} -- "$cur"));;')
    top = [*sorted(commands), *_options(parser)]
    prog = parser.prog
    function = "_" + prog.replace("-", "_")
    lines = [
        f"# {prog} completion for {shell}: source <({prog} completion {shell})",
        *(["autoload -U +X bashcompinit && bashcompinit"] if shell == "zsh" else []),
        f"{function}() {{",
        '  local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}" cmd="" i skip=""',
        "  for ((i = 1; i < COMP_CWORD; i++)); do",
        '    if [[ -n $skip ]]; then skip=""; continue; fi',
        '    case "${COMP_WORDS[i]}" in',
        f"      {'|'.join(free_values + sorted(o for o, c in valued.items() if c)) or '--never'}) skip=1;;",
        "      -*) ;;",
        '      *) cmd="${COMP_WORDS[i]}"; break;;',
        "    esac",
        "  done",
        '  case "$prev" in',
        *value_cases,
        f"    {'|'.join(free_values) or '--never'}) COMPREPLY=(); return;;",
        "  esac",
        '  case "$cmd" in',
        f'    "") COMPREPLY=($(compgen -W {_words(top)} -- "$cur"));;',
        *command_cases,
        "  esac",
        "}",
        f"complete -F {function} {prog}",
    ]
    return "\n".join(lines)
