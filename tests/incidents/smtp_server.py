"""A real SMTP server for the notices' tests: aiosmtpd on loopback (or in a lab
namespace, `python -m tests.incidents.smtp_server`), STARTTLS required with a
self-signed certificate for its address, and a switch to refuse every message (550)."""

from __future__ import annotations

import argparse
import datetime
import email
import ipaddress
import json
import os
import signal
import ssl
import threading
from email.message import Message
from typing import Any

from aiosmtpd.controller import Controller
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def certificate(directory: str, address: str) -> tuple[str, str]:
    """A self-signed certificate for `address` (its own CA): (cert path, key path)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = os.path.join(directory, "smtp-cert.pem"), os.path.join(directory, "smtp-key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))  # fmt: skip
    return cert_path, key_path


class Handler:
    def __init__(self, log: str | None = None) -> None:
        self.refuse = False
        self.messages: list[bytes] = []
        self.log = log
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd's name)
        if self.refuse:
            return "550 5.7.1 Message refused by policy"
        data = bytes(envelope.original_content or envelope.content)
        with self.lock:
            self.messages.append(data)
            if self.log is not None:
                with open(self.log, "a") as f:
                    f.write(json.dumps({"tls": session.ssl is not None, "rcpt": envelope.rcpt_tos,
                                        "data": data.decode()}) + "\n")  # fmt: skip
        return "250 OK"

    def parsed(self) -> list[Message]:
        with self.lock:
            return [email.message_from_bytes(m) for m in self.messages]


class SmtpServer:
    def __init__(self, directory: str, host: str = "127.0.0.1", port: int = 0, log: str | None = None) -> None:
        self.host = host
        self.cert, key = certificate(directory, host)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, key)
        self.handler = Handler(log)
        self.port = port or _free_port(host)
        self.controller = Controller(self.handler, hostname=host, port=self.port, tls_context=context,
                                     require_starttls=True)  # fmt: skip

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    server = SmtpServer(args.dir, args.host, args.port, args.log)
    server.start()
    print(f"smtp: listening on {args.host}:{args.port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop()


if __name__ == "__main__":
    main()
