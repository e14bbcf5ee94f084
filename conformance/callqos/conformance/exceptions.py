"""How a check ends other than by passing. Raised by the checks and the harness, caught by the
runner, which turns each into an Outcome."""

from __future__ import annotations


class CheckFailed(AssertionError):
    """The target broke the contract; the message says what was sent, expected and got."""


class CheckSkipped(Exception):
    """The check does not apply to this target; the message says why."""


class TargetTimeout(Exception):
    """The target (or its provider) did not answer within the deadline."""
