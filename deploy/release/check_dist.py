"""`make check-dist`: the three distributions, as built, keep the dependency direction.

    python deploy/release/check_dist.py DIST_DIR

DIST_DIR holds what `make dist` built: an sdist and a wheel (built from that sdist) of each of
callqos, callqos-server and callqos-conformance. This checks

1. each wheel holds its own part of the `callqos` namespace and nothing else (no
   callqos/__init__.py, no stubs in the server), the LICENSE, and the declared dependencies: the
   client exactly grpcio, protobuf and googleapis-common-protos (OpenTelemetry only as the `otel`
   extra), the server and the suite `callqos==VERSION`, the suite the server only as an extra;
2. in a fresh virtual environment with only the client wheel installed (its dependencies from the
   package index): no server, no OpenTelemetry or Prometheus; `callqos --version`; `callqos serve`
   says what to install; and the CLI makes, reads, refuses and drops calls on a live server
   started from the workspace environment on a free loopback port;
3. the suite's wheel added to that environment: still no server; `--provider` says what to
   install; `--target` certifies the live server.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
VERSION = (ROOT / "VERSION").read_text(encoding="utf-8").strip()

CLIENT, SERVER, SUITE = "callqos", "callqos-server", "callqos-conformance"
#: The subpackages of the `callqos` namespace each wheel ships.
PACKAGES = {CLIENT: {"v1", "provider", "client", "cli"}, SERVER: {"server"}, SUITE: {"conformance"}}
#: The client's whole dependency list (beyond it, only what these depend on in turn).
CLIENT_DEPENDENCIES = {"grpcio", "protobuf", "googleapis-common-protos"}
#: Nothing of these may arrive with the client.
SERVER_ONLY_PREFIXES = (
    "callqos-server",
    "opentelemetry",
    "prometheus",
    "grpcio-status",
    "grpcio-health-checking",
    "grpcio-reflection",
)
# One RPC against a local server; the generous bound only keeps a hang from stalling `make test`.
COMMAND_TIMEOUT = 60.0
EXIT_RESOURCE_EXHAUSTED = 10 + 8


class DistCheckFailed(Exception):
    pass


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise DistCheckFailed(message)


def step(text: str) -> None:
    print(f"check-dist: {text}", flush=True)


# --- 1. the artifacts --------------------------------------------------------------------------


def artifacts(dist_dir: Path, name: str) -> tuple[Path, Path]:
    stem = f"{name.replace('-', '_')}-{VERSION}"
    wheel, sdist = dist_dir / f"{stem}-py3-none-any.whl", dist_dir / f"{stem}.tar.gz"
    expect(wheel.is_file() and sdist.is_file(), f"{name}: expected {wheel.name} and {sdist.name} in {dist_dir}")
    return wheel, sdist


def requirements(metadata_text: str) -> list[Requirement]:
    return [Requirement(value) for value in Parser().parsestr(metadata_text).get_all("Requires-Dist") or []]


def check_wheel(name: str, wheel: Path) -> None:
    dist_info = f"{name.replace('-', '_')}-{VERSION}.dist-info"
    with zipfile.ZipFile(wheel) as archive:
        files = archive.namelist()
        metadata_text = archive.read(f"{dist_info}/METADATA").decode()
        license_text = archive.read(f"{dist_info}/licenses/LICENSE")
    code = [f for f in files if not f.startswith(dist_info + "/")]
    expect(all(f.startswith("callqos/") for f in code), f"{name}: files outside callqos/: {code}")
    expect("callqos/__init__.py" not in code, f"{name}: callqos/__init__.py would break the shared namespace")
    shipped = {f.split("/")[1] for f in code if f.count("/") >= 2}
    expect(shipped == PACKAGES[name], f"{name}: ships callqos/{sorted(shipped)}, expected {sorted(PACKAGES[name])}")
    expect(license_text == (ROOT / "LICENSE").read_bytes(), f"{name}: the wheel's LICENSE is not the repository's")

    required = requirements(metadata_text)
    plain: dict[str, Requirement] = {canonicalize_name(r.name): r for r in required if r.marker is None}
    extras: dict[tuple[str, str], Requirement] = {
        (canonicalize_name(r.name), extra): r
        for r in required
        for extra in ("otel", "server")
        if r.marker is not None and r.marker.evaluate({"extra": extra})
    }
    if name == CLIENT:
        expect(set(plain) == CLIENT_DEPENDENCIES, f"callqos depends on {sorted(plain)}, not only the client's three")
        expect(set(extras) == {("opentelemetry-api", "otel")}, f"callqos extras: {sorted(extras)}")
        return
    pin = plain.get(CLIENT)
    expect(pin is not None and str(pin.specifier) == f"=={VERSION}", f"{name} must pin callqos=={VERSION}")
    if name == SUITE:
        spec = (ROOT / "conformance" / "SPEC.md").read_bytes()
        with zipfile.ZipFile(wheel) as archive:
            shipped_spec = (
                archive.read("callqos/conformance/SPEC.md") if "callqos/conformance/SPEC.md" in files else b""
            )
        expect(shipped_spec == spec, "callqos-conformance must ship the SPEC.md its reports cite")
        expect(set(plain) == CLIENT_DEPENDENCIES | {CLIENT}, f"callqos-conformance depends on {sorted(plain)}")
        server = extras.get((SERVER, "server"))
        expect(
            set(extras) == {(SERVER, "server")} and server is not None and str(server.specifier) == f"=={VERSION}",
            f"callqos-conformance must require callqos-server=={VERSION} in its `server` extra only: {sorted(extras)}",
        )


# --- 2. and 3. a client-only environment against a live server ----------------------------------


def run(command: Sequence[str | Path], *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, timeout=COMMAND_TIMEOUT, env=env, check=False
    )


def succeed(command: Sequence[str | Path], env: dict[str, str] | None = None) -> str:
    result = run(command, env=env)
    expect(
        result.returncode == 0,
        f"{' '.join(map(str, command))}: exit {result.returncode}\n{result.stdout}{result.stderr}",
    )
    return result.stdout


def expect_one_line_refusal(result: subprocess.CompletedProcess[str], what: str, names: str) -> None:
    lines = result.stderr.strip().splitlines()
    expect(
        result.returncode == 2 and len(lines) == 1 and names in lines[0] and "Traceback" not in result.stderr,
        f"{what}: expected exit 2 and one line naming {names}, got exit {result.returncode}:\n{result.stderr}",
    )


@contextmanager
def live_server(workdir: Path) -> Iterator[str]:
    """The server from the workspace environment (this interpreter), in memory, on a free port."""
    from callqos.server.testing import ServerProcess  # the workspace's server, not the wheel's

    with ServerProcess(workdir / "server", storage="memory") as server:
        yield server.target


def installed(python: Path) -> set[str]:
    listing = succeed([python, "-m", "pip", "list", "--format=json", "--disable-pip-version-check"])
    return {canonicalize_name(d["name"]) for d in json.loads(listing)}


def check_client_alone(client_wheel: Path, suite_wheel: Path, workdir: Path) -> None:
    venv = workdir / "venv"
    succeed([sys.executable, "-m", "venv", venv])
    python, bin_dir = venv / "bin" / "python", venv / "bin"
    pip: list[str | Path] = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    succeed([*pip, client_wheel])
    step(f"fresh venv with only {client_wheel.name} (dependencies from the index)")

    names = installed(python)
    stray = sorted(n for n in names if n.startswith(SERVER_ONLY_PREFIXES))
    expect(not stray, f"the client wheel brought server-side packages: {stray}")
    for module in ("callqos.server", "opentelemetry"):
        result = run([python, "-c", f"import {module}"])
        expect(
            result.returncode != 0 and "ModuleNotFoundError" in result.stderr,
            f"`import {module}` must fail in the client-only venv",
        )
    succeed([python, "-c", "import callqos.client, callqos.cli.main, callqos.v1.callqos_service_pb2_grpc"])
    step("no server, OpenTelemetry or Prometheus installed; import callqos.server fails")

    version = succeed([bin_dir / "callqos", "--version"]).strip()
    expect(version == f"{CLIENT} {VERSION}", f"callqos --version printed {version!r}")
    expect_one_line_refusal(run([bin_dir / "callqos", "serve", "--listen", "127.0.0.1:0"]), "callqos serve", SERVER)
    step(f"callqos --version: {version}; callqos serve: exit 2, names {SERVER}")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("CALLQOS_", "OTEL_"))}
    with live_server(workdir) as target:
        env.update(CALLQOS_TARGET=target, CALLQOS_PRINCIPAL="check-dist")
        callqos = bin_dir / "callqos"
        expect("providers/reference" in succeed([callqos, "providers"], env), "callqos providers: no reference")
        made = json.loads(
            succeed(
                [
                    callqos,
                    "--json",
                    "make",
                    "sip:dist@example.test",
                    "--call-id",
                    "dist",
                    "--send-type",
                    "controlled-load",
                    "--send-rate",
                    "1000",
                ],
                env,
            )
        )
        expect(made["name"] == "calls/dist" and made["state"] == "STATE_CONNECTED", f"callqos make: {made}")
        # A refusal's details (ErrorInfo, the counter-offer) come from the status trailer, which
        # the client decodes without grpcio-status.
        refused = run(
            [callqos, "make", "sip:big@example.test", "--send-type", "controlled-load", "--send-rate", "10000000000"],
            env=env,
        )
        expect(
            refused.returncode == EXIT_RESOURCE_EXHAUSTED
            and "QOS_UNAVAILABLE" in refused.stderr
            and "counter-offer" in refused.stderr,
            f"an infeasible call must be refused with its details: exit {refused.returncode}\n{refused.stderr}",
        )
        dropped = json.loads(succeed([callqos, "--json", "drop", "calls/dist"], env))
        expect(dropped["state"] == "STATE_DISCONNECTED", f"callqos drop: {dropped}")
        step(f"callqos providers / make / refused make (exit 18, QOS_UNAVAILABLE) / drop against {target}")

        succeed([*pip, suite_wheel])
        expect(SERVER not in installed(python), "callqos-conformance brought the server without its extra")
        expect(run([python, "-c", "import callqos.server"]).returncode != 0, "the suite brought callqos.server")
        conformance = bin_dir / "callqos-conformance"
        version = succeed([conformance, "--version"]).strip()
        expect(version == f"{SUITE} {VERSION}", f"callqos-conformance --version printed {version!r}")
        refusal = run([conformance, "--provider", "reference"], env=env)
        expect_one_line_refusal(refusal, "callqos-conformance --provider", f"{SUITE}[server]")
        refusal = run([conformance, "--provider-command", "./my-provider"], env=env)
        expect_one_line_refusal(refusal, "callqos-conformance --provider-command", f"{SUITE}[server]")
        # The packaging is what is checked here, not the reference provider: a sample of core checks that
        # needs nothing but the client stubs (the whole suite certifies the reference in conformance/tests).
        sample = "CORE-RESP,CORE-CAP,CORE-ACCT,CORE-VAL"
        certified = run([conformance, "--target", target, "--check", sample], env=env)
        expect(
            certified.returncode == 0,
            f"callqos-conformance --target without the server: exit {certified.returncode}\n{certified.stdout}",
        )
        step(f"+ {suite_wheel.name}: still no server; --provider names {SUITE}[server]; --target certifies ({sample})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deploy/release/check_dist.py", description="Check the built distributions.")
    parser.add_argument("dist_dir", type=Path)
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        wheels = {}
        for name in (CLIENT, SERVER, SUITE):
            wheel, _sdist = artifacts(args.dist_dir, name)
            check_wheel(name, wheel)
            wheels[name] = wheel
        step(f"3 wheels + 3 sdists at {VERSION}: each its own part of the namespace, LICENSE, dependencies")
        with tempfile.TemporaryDirectory(prefix="callqos-check-dist-") as tmp:
            check_client_alone(wheels[CLIENT], wheels[SUITE], Path(tmp))
    except DistCheckFailed as exc:
        print(f"check-dist FAILED: {exc}", file=sys.stderr)
        return 1
    step(f"passed in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
