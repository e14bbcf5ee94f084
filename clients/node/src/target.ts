// The address convention, shared by the server, the CLI, every client, their tests and the
// examples (callqos.wire in the Python distribution is its home): the server listens on
// CALLQOS_LISTEN; a client connects to CALLQOS_TARGET, else to the address in CALLQOS_LISTEN
// (a wildcard host read as loopback), else to DEFAULT_ADDRESS.

/** Where a client connects. */
export const TARGET_ENV = "CALLQOS_TARGET";
/** Where the server listens; clients fall back to it. */
export const LISTEN_ENV = "CALLQOS_LISTEN";
/** Where the server listens and clients connect when told nothing else. */
export const DEFAULT_ADDRESS = "127.0.0.1:50051";

const WILDCARD_HOSTS: Record<string, string> = { "": "127.0.0.1", "0.0.0.0": "127.0.0.1", "[::]": "[::1]", "::": "[::1]" };

/** The target of the address convention, from `env` (the process's environment by default). */
export function defaultTarget(env: Record<string, string | undefined> = process.env): string {
  const target = env[TARGET_ENV]?.trim();
  if (target) {
    return target;
  }
  const listen = env[LISTEN_ENV]?.trim();
  if (listen) {
    const colon = listen.lastIndexOf(":");
    if (colon >= 0) {
      const host = listen.slice(0, colon);
      return `${WILDCARD_HOSTS[host] ?? host}:${listen.slice(colon + 1)}`;
    }
  }
  return DEFAULT_ADDRESS;
}
