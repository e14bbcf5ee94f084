"""The ``callqos`` command line (entry point :func:`callqos.cli.main.main`)."""
