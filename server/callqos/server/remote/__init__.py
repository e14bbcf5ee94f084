"""Providers in other processes, in any language: both ends of `callqos.provider.v1`.

The protocol itself is `protos/callqos/provider/v1/provider_service.proto` (its comments are the
contract); this package holds the Python ends of it:

- `protocol`: the handshake line, the environment a launched provider gets, and the conversions
  between the protocol's messages and the in-process contract's types, shared by both ends.
- `provider`: `RemoteProvider`, the host end: a `Provider` (entry point `remote`) that the server
  hosts like any other and that forwards every call to a provider process, by endpoint or by
  command. It keeps the host's promise when that process is away: it never admits, it fails
  decisions with PROVIDER_UNAVAILABLE and RetryInfo, and on every reconnection it restores what
  the host holds and applies every change the provider made meanwhile.
- `process`: `PluginProcess`, the life of a provider the host launches (handshake, logs,
  restart with backoff, stop).
- `decisions`: `DecisionStream`, the host's end of the Decide stream (decisions on one stream
  instead of an RPC each, when the provider serves it).
- `kit`: `ProviderServicer`, the provider end for Python: it serves any in-process `Provider`
  over the protocol (idempotency by request_id, the change journal, restore).
- `serve`: the `callqos-provider serve module:Class` command built on the kit.

The host end uses the server's internals (errors, the provider deadline), so it lives here, beside
the in-process host (`callqos.server.hosting`), rather than among the providers, which see only
their public face.
"""
