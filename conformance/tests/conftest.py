"""The conformance suite's own tests run it against real servers (subprocesses on loopback)."""
