// Runs a real callqos server on a free loopback port for the tests:
// `callqos serve --listen 127.0.0.1:0 --port-file F --storage memory`. The program is
// $CALLQOS_BIN, else ../../.venv/bin/callqos; CALLQOS_TARGET uses a running server instead.
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

export interface TestServer {
  address: string;
  stop(): Promise<void>;
}

function serverEnv(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith("CALLQOS_")));
}

export async function startServer(): Promise<TestServer> {
  if (process.env.CALLQOS_TARGET) {
    return { address: process.env.CALLQOS_TARGET, stop: async () => {} };
  }
  const bin = process.env.CALLQOS_BIN ?? resolve("../../.venv/bin/callqos");
  if (!existsSync(bin)) {
    throw new Error(`no ${bin}: run \`make venv\` at the top, or set CALLQOS_BIN or CALLQOS_TARGET`);
  }
  const dir = mkdtempSync(join(tmpdir(), "callqos-node-test-"));
  const portFile = join(dir, "port");
  const child: ChildProcess = spawn(
    bin,
    ["serve", "--listen", "127.0.0.1:0", "--port-file", portFile, "--storage", "memory"],
    // The server reads only what it is given: no CALLQOS_* of the caller's shell.
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
