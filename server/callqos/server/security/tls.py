"""TLS on the listener, with certificates that can be replaced while the server runs.

gRPC asks `CertificateFiles.fetch` for the certificate configuration before every new TLS
handshake (`grpc.dynamic_ssl_server_credentials`). It only `stat`s the files — certificate, key and
client CA — and reads them again when one changed (modification time, size or inode: a Kubernetes
secret update swaps a symlink, a rename replaces the inode). A new pair is used only once it
parses and the key matches the certificate: a rotation caught half-way (new certificate, old key)
keeps the old pair and is tried again at the next handshake. Connections already open keep the
certificate they were made with; new ones get the new one.

With a client CA every client must present a certificate it signed: gRPC Python can require a
client certificate or not ask for one, not ask for one optionally.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

log = logging.getLogger("callqos.server.security")

Signature = tuple[tuple[int, int, int], ...]


class CertificateError(ValueError):
    """The files do not make a usable certificate configuration."""


def load_configuration(cert: Path, key: Path, client_ca: Path | None) -> grpc.ServerCertificateConfiguration:
    """Read and check the files: the chain and key parse, the key is the certificate's, the CA parses."""
    try:
        chain, private = cert.read_bytes(), key.read_bytes()
        roots = client_ca.read_bytes() if client_ca is not None else None
    except OSError as exc:
        raise CertificateError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    try:
        leaf = x509.load_pem_x509_certificates(chain)[0]
        secret = serialization.load_pem_private_key(private, password=None)
        if roots is not None:
            x509.load_pem_x509_certificates(roots)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"cannot parse the TLS files: {exc}") from exc
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if secret.public_key().public_bytes(serialization.Encoding.PEM, public) != leaf.public_key().public_bytes(
        serialization.Encoding.PEM, public
    ):
        raise CertificateError(f"{key} is not the key of the certificate in {cert}")
    return grpc.ssl_server_certificate_configuration([(private, chain)], root_certificates=roots)


class CertificateFiles:
    """The certificate, key and client CA files, watched for changes."""

    def __init__(self, cert: Path, key: Path, client_ca: Path | None = None) -> None:
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self._paths = [path for path in (cert, key, client_ca) if path is not None]
        self._lock = threading.Lock()  # gRPC may handshake on several threads
        self._signature = self._stat()
        self.initial = load_configuration(cert, key, client_ca)  # raises: a server must start with good files
        self._refused: Signature | None = None
        self.reloads = 0

    def _stat(self) -> Signature:
        signature = []
        for path in self._paths:
            try:
                status = os.stat(path)  # follows symlinks: a swapped ..data link changes the inode
            except OSError:
                status = None
            signature.append((status.st_mtime_ns, status.st_size, status.st_ino) if status else (0, 0, 0))
        return tuple(signature)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's certificate configuration fetcher: None keeps the configuration in use."""
        try:
            signature = self._stat()
            with self._lock:
                if signature == self._signature or signature == self._refused:
                    return None
                try:
                    configuration = load_configuration(self.cert, self.key, self.client_ca)
                except CertificateError as exc:
                    self._refused = signature
                    log.warning("TLS files changed but cannot be used yet; keeping the current ones: %s", exc)
                    return None
                self._signature, self._refused = signature, None
                self.reloads += 1
            log.info("TLS certificate reloaded", extra={"cert": str(self.cert), "reloads": self.reloads})
            return configuration
        except Exception:  # never let a fetcher failure reach gRPC core
            log.exception("TLS certificate reload failed")
            return None

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self.initial, self.fetch, require_client_authentication=self.client_ca is not None
        )
