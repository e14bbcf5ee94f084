"""A paced UDP sender and a receiver that measures what arrives, for demos and tests.

    python -m callqos.server.providers.linux_tc.traffic receive --ports 5000,5001 --seconds 10
    python -m callqos.server.providers.linux_tc.traffic send --to 10.99.0.2:5000 --source-port 4000 \\
        --rate 1000000 --seconds 5

Rates are in bytes per second *on the wire*: each datagram counts its payload plus the UDP, IPv4
and Ethernet headers (42 bytes), because that is what an HTB class on an Ethernet interface
counts. The receiver prints one JSON line per interval with cumulative counts per port and the
rate over that interval ({"t": seconds since start, "ports": {"5000": [frame_bytes, datagrams]},
"rates": {"5000": bytes_per_second}}) and, at the end, the mean rate per port over the whole run
({"rates": {...}}).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import selectors
import socket
import sys
import time
from typing import TextIO

HEADERS = 8 + 20 + 14  # UDP + IPv4 + Ethernet: what a frame adds to the payload
DEFAULT_PAYLOAD = 1200


def send(
    to: tuple[str, int],
    rate: int,
    seconds: float,
    *,
    source_port: int = 0,
    payload: int = DEFAULT_PAYLOAD,
    dscp: int | None = None,
) -> int:
    """Send `rate` frame bytes/s of UDP to `to` for `seconds`; the frame bytes sent."""
    frame = payload + HEADERS
    data = bytes(payload)
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", source_port))
        if dscp is not None:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, dscp << 2)
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < seconds:
            # Paced by a running total rather than a fixed sleep, so scheduling hiccups are
            # made up for instead of lowering the rate. A full queue blocks sendto (the socket
            # buffer is flow-controlled by the qdisc), so the clock is read per datagram too:
            # the sender stops on time instead of catching up on what it could not send.
            while sent + frame <= rate * elapsed and time.monotonic() - start < seconds:
                with contextlib.suppress(OSError):  # ENOBUFS: the qdisc dropped it
                    sock.sendto(data, to)
                sent += frame
            time.sleep(0.0005)
    return sent


def receive(ports: list[int], seconds: float, *, interval: float = 0.25, out: TextIO | None = None) -> dict[int, float]:
    """Count what arrives on `ports` for `seconds`, printing cumulative counts each interval;
    the mean frame bytes/s per port."""
    stream = out or sys.stdout
    counts = {port: [0, 0] for port in ports}
    selector = selectors.DefaultSelector()
    sockets = []
    for port in ports:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.bind(("0.0.0.0", port))
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, port)
        sockets.append(sock)
    start = time.monotonic()
    next_report = start + interval
    last = {port: 0 for port in ports}
    try:
        while (now := time.monotonic()) - start < seconds:
            for key, _ in selector.select(timeout=max(0.0, min(next_report - now, 0.05))):
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                while True:
                    try:
                        size = len(ready.recv(65536))
                    except BlockingIOError:
                        break
                    counts[key.data][0] += size + HEADERS
                    counts[key.data][1] += 1
            if time.monotonic() >= next_report:
                line = {
                    "t": round(time.monotonic() - start, 3),
                    "ports": {str(p): list(c) for p, c in counts.items()},
                    # frame bytes/s over the interval just ended, for people watching
                    "rates": {str(p): round((c[0] - last[p]) / interval) for p, c in counts.items()},
                }
                last = {p: c[0] for p, c in counts.items()}
                print(json.dumps(line), file=stream, flush=True)
                next_report += interval
    finally:
        for sock in sockets:
            sock.close()
    elapsed = time.monotonic() - start
    rates = {port: count[0] / elapsed for port, count in counts.items()}
    print(json.dumps({"rates": {str(p): round(r) for p, r in rates.items()}}), file=stream, flush=True)
    return rates


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m callqos.server.providers.linux_tc.traffic", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    sender = commands.add_parser("send", help="send paced UDP")
    sender.add_argument("--to", type=_address, required=True, help="HOST:PORT")
    sender.add_argument("--rate", type=int, required=True, help="frame bytes per second")
    sender.add_argument("--seconds", type=float, default=5.0)
    sender.add_argument("--source-port", type=int, default=0)
    sender.add_argument("--payload", type=int, default=DEFAULT_PAYLOAD, help="UDP payload bytes per datagram")
    sender.add_argument("--dscp", type=int)
    receiver = commands.add_parser("receive", help="count what arrives")
    receiver.add_argument("--ports", required=True, help="comma-separated UDP ports")
    receiver.add_argument("--seconds", type=float, default=10.0)
    receiver.add_argument("--interval", type=float, default=0.25)
    args = parser.parse_args(argv)
    if args.command == "send":
        options = {"source_port": args.source_port, "payload": args.payload, "dscp": args.dscp}
        sent = send(args.to, args.rate, args.seconds, **options)
        print(json.dumps({"sent": sent, "rate": round(sent / args.seconds)}), flush=True)
    else:
        receive([int(p) for p in args.ports.split(",")], args.seconds, interval=args.interval)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
