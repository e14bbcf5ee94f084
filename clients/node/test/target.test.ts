// The address convention (the same table as the Python client's test of callqos.wire).
import assert from "node:assert/strict";
import { test } from "node:test";
import { defaultTarget } from "../src/index.js";

test("defaultTarget follows the address convention", () => {
  const cases: [Record<string, string>, string][] = [
    [{}, "127.0.0.1:50051"],
    [{ CALLQOS_TARGET: "10.0.0.1:7000" }, "10.0.0.1:7000"],
    [{ CALLQOS_TARGET: "10.0.0.1:7000", CALLQOS_LISTEN: "127.0.0.1:6000" }, "10.0.0.1:7000"],
    [{ CALLQOS_LISTEN: "127.0.0.1:6000" }, "127.0.0.1:6000"],
    [{ CALLQOS_LISTEN: "0.0.0.0:6000" }, "127.0.0.1:6000"],
    [{ CALLQOS_LISTEN: "[::]:6000" }, "[::1]:6000"],
    [{ CALLQOS_LISTEN: "[::1]:6000" }, "[::1]:6000"],
    [{ CALLQOS_LISTEN: "server.example:6000" }, "server.example:6000"],
    [{ CALLQOS_TARGET: " ", CALLQOS_LISTEN: "127.0.0.1:6000" }, "127.0.0.1:6000"],
  ];
  for (const [env, want] of cases) {
    assert.equal(defaultTarget(env), want, JSON.stringify(env));
  }
});
