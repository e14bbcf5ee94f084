"""How providers are found: the `callqos.providers` entry-point group, or `module:Class`.

The host never imports a provider by name in its own code; a third party ships a distribution
that declares

    [project.entry-points."callqos.providers"]
    my-provider = "my_package.provider:MyProvider"

and names `my-provider` in the server's configuration.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from callqos.server.providers.base import Provider

GROUP = "callqos.providers"


class ProviderLoadError(Exception):
    """A configured provider cannot be loaded."""


def available() -> dict[str, str]:
    """Entry-point name → `module:Class` for every installed provider."""
    return {ep.name: ep.value for ep in entry_points(group=GROUP)}


def load_class(plugin: str) -> tuple[type[Provider], str]:
    """The provider class for an entry-point name or a `module:Class` reference, and the
    `module:Class` it resolved to."""
    if ":" in plugin:
        module_name, _, attr = plugin.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            raise ProviderLoadError(f"cannot import provider {plugin!r}: {exc}") from exc
        target = plugin
    else:
        matches = [ep for ep in entry_points(group=GROUP) if ep.name == plugin]
        if not matches:
            known = ", ".join(sorted(available())) or "none"
            raise ProviderLoadError(f"no provider {plugin!r} in entry points (installed: {known})")
        try:
            obj = matches[0].load()
        except Exception as exc:  # a broken plugin must not take the host down unexplained
            raise ProviderLoadError(f"provider {plugin!r} failed to load: {exc}") from exc
        target = matches[0].value
    if not (isinstance(obj, type) and issubclass(obj, Provider)):
        raise ProviderLoadError(f"{plugin!r} is not a callqos Provider subclass")
    return obj, target


def instantiate(plugin: str, settings: Mapping[str, Any]) -> tuple[Provider, str]:
    cls, target = load_class(plugin)
    try:
        return cls(settings), target
    except Exception as exc:
        raise ProviderLoadError(f"provider {plugin!r} rejected its settings: {exc}") from exc
