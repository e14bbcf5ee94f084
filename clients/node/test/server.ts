// Runs a real callqos server on a free loopback port for the tests:
// `callqos serve --listen 127.0.0.1:0 --port-file F --storage memory`. The program is
// $CALLQOS_BIN, else ../../.venv/bin/callqos; CALLQOS_TARGET uses a running server instead.
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

export interface TestServer {
  address: string;
  stop(): Promise<void>;
}

// The server reads only what it is given: no CALLQOS_* of the caller's shell.
function serverEnv(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith("CALLQOS_")));
}

function serverBinary(): string {
  const bin = process.env.CALLQOS_BIN ?? resolve("../../.venv/bin/callqos");
  if (!existsSync(bin)) {
    throw new Error(`no ${bin}: run \`make venv\` at the top, or set CALLQOS_BIN or CALLQOS_TARGET`);
  }
  return bin;
}

export async function startServer(): Promise<TestServer> {
  if (process.env.CALLQOS_TARGET) {
    return { address: process.env.CALLQOS_TARGET, stop: async () => {} };
  }
  const dir = mkdtempSync(join(tmpdir(), "callqos-node-test-"));
  return start(serverBinary(), dir, ["--storage", "memory"]);
}

/** A server requiring mTLS and accepting bearer tokens, and the files made for it by the
 * server's test kit (`python -m callqos.server.testpki`): ca, client_cert, client_key,
 * alice_token, bob_token (tenant acme). */
export interface SecureServer extends TestServer {
  files: Record<string, string>;
}

export async function startSecureServer(): Promise<SecureServer> {
  const bin = serverBinary();
  const dir = mkdtempSync(join(tmpdir(), "callqos-node-tls-test-"));
  const made = spawnSync(join(dirname(bin), "python"), ["-m", "callqos.server.testpki", join(dir, "pki")], {
    encoding: "utf8",
  });
  if (made.status !== 0) {
    throw new Error(`making the test PKI failed: ${made.stderr}`);
  }
  const files = JSON.parse(made.stdout) as Record<string, string>;
  const server = await start(bin, dir, ["--config", files.config]);
  return { ...server, files };
}

async function start(bin: string, dir: string, args: string[]): Promise<TestServer> {
  const portFile = join(dir, "port");
  const child: ChildProcess = spawn(
    bin,
    ["serve", "--listen", "127.0.0.1:0", "--port-file", portFile, ...args],
    { stdio: ["ignore", "inherit", "inherit"], env: serverEnv() },
  );
  const exited = new Promise<number | null>((res) => child.on("exit", (code) => res(code)));
  let exitCode: number | null | undefined;
  void exited.then((code) => (exitCode = code));
  const stop = async () => {
    if (exitCode === undefined) {
      child.kill("SIGTERM");
      const code = await Promise.race([exited, sleep(10_000, "timeout" as const, { ref: false })]);
      if (code === "timeout") {
        child.kill("SIGKILL");
      }
    }
    rmSync(dir, { recursive: true, force: true });
  };
  for (const deadline = Date.now() + 30_000; Date.now() < deadline; ) {
    if (exitCode !== undefined) {
      await stop();
      throw new Error(`callqos serve exited (${exitCode}) before serving`);
    }
    const port = existsSync(portFile) ? Number(readFileSync(portFile, "utf8").trim()) : 0;
    if (port > 0) {
      return { address: `127.0.0.1:${port}`, stop };
    }
    await sleep(50);
  }
  await stop();
  throw new Error("callqos serve wrote no port file within 30s");
}
