"""linux-tc: a provider that enforces its grants with Linux traffic control (HTB + u32).

- `config`: the provider's settings (links = interfaces, capacities, namespaces);
- `filters`: the filter format carried in `provider_specific`, parsed and validated;
- `netlink`: the kernel behind a narrow interface (pyroute2, one thread per interface);
- `shaper`: what an interface should hold, and reconciling it;
- `provider`: the provider (the reference provider's accounting, enforced);
- `traffic`: a paced UDP sender and a receiver measuring goodput, for demos and tests.

See README.md beside this file. The entry point names `provider:LinuxTcProvider` directly, so
that this package imports nothing: `python -m callqos.server.providers.linux_tc.traffic` then
starts in milliseconds, which matters when senders are timed.
"""
