"""Resume bookkeeping for ``watch()``, shared by the sync and async event streams.

The server guarantees that ``WatchEvents(after_sequence=N)`` delivers every event with a
sequence above N exactly once, in order. The client keeps N = the last sequence it handed to
the caller, reopens the stream from there when it breaks with a transient status, and drops
anything at or below N (a defence in depth: a resumed stream never repeats what was seen).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import grpc

from callqos import wire
from callqos.v1 import callqos_service_pb2, event_pb2

from . import _policy, _requests, specs
from .errors import CallQosError

#: The message of the UNAVAILABLE error a stream that the server ended with OK is treated as.
STREAM_ENDED = "the server ended the watch stream"
#: Initial metadata of WatchEvents: the sequence the stream starts after.
START_SEQUENCE_HEADER = wire.START_SEQUENCE_HEADER
_DEFAULT = _policy.watch_resume()


@dataclass(frozen=True)
class ResumePolicy:
    """How ``watch()`` reconnects after a transient failure (server restart, shutdown, network).

    The defaults are the ``watchResume`` part of ``service_config.json``, the rule all four
    clients follow: reopen on the ``resumable_codes`` (and when the server ends the stream),
    after the last sequence delivered, with full-jitter exponential backoff. Bounded by time, not
    by attempts (as python-api-core's Retry is): ``give_up_after`` seconds of consecutive
    failures raise the last error. ``None`` retries for ever. Any other error ends the watch.
    """

    initial_backoff: float = _DEFAULT.initial_backoff
    max_backoff: float = _DEFAULT.max_backoff
    multiplier: float = _DEFAULT.multiplier
    give_up_after: float | None = _DEFAULT.give_up_after
    #: A stream that stayed open this long before failing counts as having worked, so the
    #: next failure starts a fresh backoff (a quiet stream delivers no event to prove it).
    healthy_after: float = _DEFAULT.healthy_after
    #: The codes after which reopening the stream may help. A watch only reads, so reopening it
    #: can never do harm: UNAVAILABLE covers restarts, SHUTTING_DOWN and cut connections; a
    #: CANCELLED we did not ask for is what a server that stops past its grace period sends.
    resumable_codes: frozenset[grpc.StatusCode] = _DEFAULT.resumable_codes

    def delays(self) -> Iterable[float]:
        delay = self.initial_backoff
        while True:
            # Full jitter keeps a crowd of watchers from reconnecting in lockstep.
            yield random.uniform(0, delay)
            delay = min(delay * self.multiplier, self.max_backoff)


class WatchState:
    """Cursor, filters and failure accounting of one ``watch()``."""

    def __init__(
        self,
        after_sequence: int | None,
        call: str | None,
        types: Iterable[specs.EnumLike] | None,
        policy: ResumePolicy,
        clock: Callable[[], float] = time.monotonic,
        line: str | None = None,
        on_reconnect: Callable[[CallQosError, float], object] | None = None,
    ) -> None:
        self.last_sequence: int | None = after_sequence
        self._call = call
        self._line = line
        self._types = list(types or ())
        self._policy = policy
        self._clock = clock
        self._delays = iter(policy.delays())
        self._failing_since: float | None = None
        self._opened_at = 0.0
        #: How many times the stream was reopened after a failure.
        self.reconnects = 0
        #: Told (the error, the seconds until the next attempt) before each reconnection.
        self.on_reconnect = on_reconnect

    def request(self) -> callqos_service_pb2.WatchEventsRequest:
        """The request for the next (re)connection: resume after the last sequence seen."""
        self._opened_at = self._clock()
        return _requests.watch_events(self.last_sequence, self._call, self._types, self._line)

    def started(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> None:
        """Take the stream's start as the cursor of a watch "from now" that has none yet, so
        that events committed while it reconnects before its first event are not missed."""
        if self.last_sequence is not None:
            return
        for key, value in metadata or ():
            if key == START_SEQUENCE_HEADER:
                self.last_sequence = int(value)

    def accept(self, event: event_pb2.QosEvent) -> bool:
        """Record an event; False for one already delivered (never hand out a duplicate)."""
        self._failing_since = None
        self._delays = iter(self._policy.delays())
        if self.last_sequence is not None and event.sequence <= self.last_sequence:
            return False
        self.last_sequence = event.sequence
        return True

    def backoff(self, error: CallQosError) -> float:
        """Seconds to wait before reconnecting after ``error``; re-raises it when final."""
        if error.code not in self._policy.resumable_codes:
            raise error
        now = self._clock()
        if now - self._opened_at >= self._policy.healthy_after:
            self._failing_since = None
            self._delays = iter(self._policy.delays())
        if self._failing_since is None:
            self._failing_since = now
        give_up = self._policy.give_up_after
        if give_up is not None and now - self._failing_since > give_up:
            raise error
        self.reconnects += 1
        delay = next(self._delays)
        if self.on_reconnect is not None:
            self.on_reconnect(error, delay)
        return delay
