"""`make bench` (third), the cost of authentication: CreateCall + DropCall against servers started
the same way, in alternating rounds in the same run, each a separate process:

- off: development mode (no authenticator, the principal header), plaintext — the baseline;
- jwt: the jwt authenticator with cached keys, every RPC carrying the same ES256 token (as a
  client with a token source does until it refreshes): the token's signature is verified once,
  then recognised by its exact text;
- jwt, new token per cycle: every cycle a token the server has never seen (signed here, in the
  load generator), so every CreateCall verifies an ES256 signature — the worst case;
- tls + jwt: the same token over TLS (TLS 1.3, ECDSA P-256), for the cost of TLS itself.

Printed per variant: the median over rounds of cycles/s and of the server's CPU per cycle, and the
overhead against "off". The goal is ≤ 10 % for JWT with cached keys; it is judged on the server's
CPU per cycle, which is what authentication costs, and which is far steadier than throughput on a
shared machine (one window of the same server varies by tens of per cent in cycles/s there).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from workload import measure, process_cpu_seconds, qos

from callqos.server.testing import ServerProcess
from callqos.server.testpki import AUDIENCE, ISSUER, TestIssuer, TestPki
from callqos.v1 import call_pb2
from callqos.v1 import callqos_service_pb2 as svc
from callqos.v1 import callqos_service_pb2_grpc as svc_grpc

TARGET_OVERHEAD = 0.10
ROUNDS = 5
ROUND_SECONDS = 2.0
VARIANTS = ("off", "jwt", "jwt-fresh", "tls-jwt")
LABELS = {
    "off": "no authentication (development mode)",
    "jwt": "JWT, cached keys, token reused",
    "jwt-fresh": "JWT, a new token every cycle",
    "tls-jwt": "TLS + JWT, token reused",
}


@dataclass
class Result:
    rates: list[float]
    cpu_us: list[float]

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)

    @property
    def cpu_us_per_cycle(self) -> float:
        return statistics.median(self.cpu_us)


class Setup:
    """The PKI, the issuer and the tokens every variant uses, made once."""

    def __init__(self, directory: Path) -> None:
        self.pki = TestPki(directory / "pki")
        self.server_cert = self.pki.server_certificate()
        self.issuer = TestIssuer(directory / "issuer")
        self.token = self.issuer.token("bench", lifetime=3600)
        self._serial = itertools.count()

    def fresh(self) -> str:
        """A token never used before (its jti differs)."""
        return self.issuer.token("bench", lifetime=3600, jti=str(next(self._serial)))

    def settings(self, variant: str) -> dict[str, Any]:
        if variant == "off":
            return {}
        jwt = {
            "authenticators": ["jwt"],
            "jwt_issuer": ISSUER,
            "jwt_audience": AUDIENCE,
            "jwt_jwks_file": self.issuer.jwks_path,
            "jwt_algorithms": ["ES256"],
        }
        if variant == "tls-jwt":
            jwt.update(tls_cert=self.server_cert.cert, tls_key=self.server_cert.key)
        return jwt

    def credentials(self, variant: str) -> grpc.ChannelCredentials | None:
        return grpc.ssl_channel_credentials(self.pki.ca_pem) if variant == "tls-jwt" else None


async def cycles(server: ServerProcess, setup: Setup, variant: str, seconds: float) -> tuple[float, float]:
    credentials = setup.credentials(variant)
    channel = (
        grpc.aio.secure_channel(server.target, credentials)
        if credentials is not None
        else grpc.aio.insecure_channel(server.target)
    )
    async with channel:
        stub = svc_grpc.CallQosServiceStub(channel)  # type: ignore[no-untyped-call]
        request = svc.CreateCallRequest(call=call_pb2.Call(destination="sip:bench", requested_qos=qos(1000)))

        async def cycle(_: int) -> int:
            token = setup.fresh() if variant == "jwt-fresh" else setup.token
            metadata = () if variant == "off" else (("authorization", f"Bearer {token}"),)
            call = await stub.CreateCall(request, metadata=metadata)
            await stub.DropCall(svc.DropCallRequest(name=call.name), metadata=metadata)
            return 1

        measured = await measure(cycle, seconds, process_cpu_seconds(server.pid))
    return measured.rate, (measured.probe_per_op or 0.0) * 1e6


async def run(seconds: float = ROUND_SECONDS, rounds: int = ROUNDS) -> dict[str, Result]:
    results = {variant: Result([], []) for variant in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="callqos-bench-auth-") as directory:
        setup = Setup(Path(directory))
        servers = {
            variant: ServerProcess(
                Path(directory) / variant,
                storage="sqlite",
                log_level="warning",
                credentials=setup.credentials(variant),
                **setup.settings(variant),
            )
            for variant in VARIANTS
        }
        try:
            for server in servers.values():
                await asyncio.to_thread(server.start)
            for _ in range(rounds):
                for variant, server in servers.items():
                    rate, cpu = await cycles(server, setup, variant, seconds)
                    results[variant].rates.append(rate)
                    results[variant].cpu_us.append(cpu)
        finally:
            for server in servers.values():
                await asyncio.to_thread(server.close)
    return results


def report(results: dict[str, Result]) -> str:
    base = results["off"]
    lines = [f"authentication cost on CreateCall + DropCall (median of {len(base.rates)} alternating rounds)"]
    for variant in VARIANTS:
        result = results[variant]
        overhead = 1 - result.rate / base.rate
        cpu = result.cpu_us_per_cycle / base.cpu_us_per_cycle - 1
        lines.append(
            f"{LABELS[variant]:<38}{result.rate:>8.0f} cycles/s  overhead {overhead:>6.1%}   "
            f"server CPU {result.cpu_us_per_cycle:>6.0f} µs/cycle ({cpu:+.0%})"
        )
    jwt = results["jwt"].cpu_us_per_cycle / base.cpu_us_per_cycle - 1
    verdict = "met" if jwt <= TARGET_OVERHEAD else "NOT met"
    lines.append(
        f"the {TARGET_OVERHEAD:.0%} target for JWT with cached keys (server CPU per cycle): {verdict} ({jwt:+.1%})"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=ROUND_SECONDS, help="measurement window per round")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args()
    print(report(asyncio.run(run(args.seconds, args.rounds))))


if __name__ == "__main__":
    main()
