"""`callqos-provider serve`: run by hand (it says how it is meant to be run), served over TCP with
mutual TLS to a server that dials it as an endpoint."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import grpc
import pytest
from remote_kit import SERVE, dialled
from server_testkit import make_request, qos

from callqos.server import testing
from callqos.server.remote import protocol
from callqos.v1 import call_pb2
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc


def test_run_by_hand_without_an_address_it_says_how_to_run_it() -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CALLQOS_PROVIDER")}
    run = subprocess.run([*SERVE, "reference"], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert 'command = ["callqos-provider", "serve", "reference"]' in run.stderr
    assert "--listen unix:///tmp/my-provider.sock" in run.stderr


def test_an_unknown_plugin_is_a_one_line_error() -> None:
    run = subprocess.run(
        [*SERVE, "no-such-provider", "--listen", "127.0.0.1:0"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2 and "no provider 'no-such-provider'" in run.stderr


def openssl(*arguments: str, cwd: Path) -> None:
    subprocess.run(["openssl", *arguments], cwd=cwd, check=True, capture_output=True, timeout=60)


def certificates(directory: Path) -> None:
    """A CA, a server certificate for `provider.test` and a client certificate, all signed by it."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=test-ca", cwd=directory
    )
    for name, san in (("provider", "DNS:provider.test"), ("host", "DNS:callqos-host")):
        (directory / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=directory)
        openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext",
            cwd=directory,
        )  # fmt: skip


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make certificates")
async def test_a_provider_over_tcp_with_mutual_tls(tmp_path: Path) -> None:
    certificates(tmp_path)
    tls = ["--tls-cert", "provider.pem", "--tls-key", "provider.key", "--tls-client-ca", "ca.pem"]
    # The kit takes the flags a test server takes (--listen 127.0.0.1:0 --port-file F); over TLS
    # the plain health check of ServerProcess cannot reach it, so its port file says it is up.
    program = [*SERVE, "reference", *(arg if arg.startswith("--") else str(tmp_path / arg) for arg in tls)]
    async with testing.ServerProcess(tmp_path / "provider", program=program, health_check=False) as provider:
        table = {"ca_file": str(tmp_path / "ca.pem"), "server_name": "provider.test"}
        mutual = {**table, "cert_file": str(tmp_path / "host.pem"), "key_file": str(tmp_path / "host.key")}
        async with testing.InProcessServer(
            tmp_path / "server", providers={"acme": dialled(provider.target, tls=mutual)}, default_provider="acme"
        ) as server:
            async with grpc.aio.insecure_channel(server.target) as channel:
                call = await svc_grpc.CallQosServiceStub(channel).CreateCall(make_request(qos(1000)))
            assert call.state == call_pb2.Call.State.STATE_CONNECTED
        # Without the host's certificate the provider does not talk to it: the server cannot start.
        lone = testing.InProcessServer(
            tmp_path / "lone",
            providers={"acme": dialled(provider.target, tls=table, start_timeout_seconds=1.0)},
            default_provider="acme",
        )
        with pytest.raises(Exception, match="not reached at start-up"):
            await lone.start()
        await lone.close()


def test_the_handshake_names_where_the_kit_listens() -> None:
    from callqos.server.remote.serve import handshake_for

    assert handshake_for("unix:///tmp/a/p.sock", 1).line() == "CALLQOS_PROVIDER|1|unix|/tmp/a/p.sock|grpc"
    assert handshake_for("127.0.0.1:0", 4242).target == "127.0.0.1:4242"
    assert protocol.Handshake.parse(handshake_for("unix:/x.sock", 1).line()).address == "/x.sock"


def test_a_launched_kit_stops_cleanly_on_sigterm_from_its_handshake_on(tmp_path: Path) -> None:
    """The host may stop a provider as soon as it has read its handshake (a server shut down while
    starting), with its stdin still open or just closed: the kit exits 0, not killed by the signal, and
    does not abort in the interpreter's shutdown."""
    env = {
        **os.environ,
        protocol.MAGIC_COOKIE_ENV: protocol.MAGIC_COOKIE,
        protocol.PROTOCOL_VERSIONS_ENV: str(protocol.PROTOCOL_VERSION),
        protocol.SOCKET_ENV: str(tmp_path / "provider.sock"),
    }
    for close_stdin in (False, True):
        kit = subprocess.Popen(
            [*SERVE, "reference"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        assert kit.stdin is not None and kit.stdout is not None and kit.stderr is not None
        try:
            assert kit.stdout.readline().startswith(protocol.MAGIC.encode())
            if close_stdin:
                kit.stdin.close()  # as the host does, right before SIGTERM
            kit.send_signal(signal.SIGTERM)
            status = kit.wait(timeout=30)
            stderr = kit.stderr.read()
        finally:
            kit.kill()
            for stream in (kit.stdin, kit.stdout, kit.stderr):
                stream.close()
        assert status == 0 and b"Fatal Python error" not in stderr, (close_stdin, status, stderr[-2000:])
