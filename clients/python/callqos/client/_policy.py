"""The retry and resume policy of every callqos client, read from ``service_config.json``.

The file is a copy of ``clients/service_config.json`` (``make generate`` copies it, ``make
check-generated`` fails when the copy drifts), the one policy the Python, Go, TypeScript and Java
clients all apply; ``clients/README.md`` explains each choice. It has two parts:

- ``serviceConfig``: a gRPC service config (gRFC A6 retry policy), given to the channel as is.
- ``watchResume``: how ``watch()`` reopens a broken WatchEvents stream (see ``_resume``). gRPC
  never sees this part.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import grpc

FILE_NAME = "service_config.json"


@dataclass(frozen=True)
class WatchResume:
    """The ``watchResume`` part, in seconds and status codes."""

    initial_backoff: float
    max_backoff: float
    multiplier: float
    healthy_after: float
    give_up_after: float
    resumable_codes: frozenset[grpc.StatusCode]


def seconds(duration: str) -> float:
    """A protobuf JSON duration ("0.1s", "60s") in seconds, as the service config writes them."""
    if not duration.endswith("s"):
        raise ValueError(f"not a duration: {duration!r}")
    return float(duration[:-1])


@cache
def policy_file() -> dict[str, Any]:
    """The whole policy file, parsed."""
    text = resources.files(__package__).joinpath(FILE_NAME).read_text("utf-8")
    policy: dict[str, Any] = json.loads(text)
    return policy


def service_config() -> dict[str, Any]:
    """The gRPC service config: the methods the channel retries, how often, on which codes."""
    config: dict[str, Any] = json.loads(json.dumps(policy_file()["serviceConfig"]))  # a private copy
    return config


def retryable_codes() -> frozenset[grpc.StatusCode]:
    """Every code the service config retries on (for any method)."""
    return frozenset(
        grpc.StatusCode[name]
        for method in policy_file()["serviceConfig"]["methodConfig"]
        for name in method.get("retryPolicy", {}).get("retryableStatusCodes", ())
    )


@cache
def watch_resume() -> WatchResume:
    """The resume rule every client's watch follows."""
    part = policy_file()["watchResume"]
    return WatchResume(
        initial_backoff=seconds(part["initialBackoff"]),
        max_backoff=seconds(part["maxBackoff"]),
        multiplier=float(part["backoffMultiplier"]),
        healthy_after=seconds(part["healthyAfter"]),
        give_up_after=seconds(part["giveUpAfter"]),
        resumable_codes=frozenset(grpc.StatusCode[name] for name in part["resumableStatusCodes"]),
    )
