"""A real Mosquitto (Debian) for the mirror's tests: TLS 1.2+, client certificates
required, a password file and an ACL file, on loopback, with test certificates made by
`cryptography` in a temporary directory."""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from concentrator.sim.points import free_tcp_port

PREFIX = "holder/concentrator"
PASSWORDS = {"concentrator": "pub-secret", "viewer": "view-secret", "nobody": "no-secret"}
# The shipped example ACL (its prefix is PREFIX): the concentrator may only write under
# its prefix, viewers may only read it; "nobody" has no rule (mosquitto denies what no
# rule allows).
ACL = (Path(__file__).parents[2] / "conf" / "mosquitto" / "concentrator.acl").read_text()
SHIPPED_CONF = Path(__file__).parents[2] / "conf" / "mosquitto" / "mosquitto.conf"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass
class Pki:
    directory: Path
    label: str = "test"  # the CA's name, "<label> CA"; its files <label>-ca.crt / .crl but for "test"
    ca: Path = field(init=False)

    def __post_init__(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        self._not_before, self._not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=1)
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        self._ca_cert = (
            x509.CertificateBuilder()
            .subject_name(_name(f"{self.label} CA"))
            .issuer_name(_name(f"{self.label} CA"))
            .public_key(self._ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._not_before)
            .not_valid_after(self._not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(self._ca_key, hashes.SHA256())
        )
        self.ca = self.directory / self._file("ca.crt")
        self.ca.write_bytes(self._ca_cert.public_bytes(serialization.Encoding.PEM))

    def crl(self, revoked: list[Path]) -> Path:
        """A CRL of this CA revoking the certificates in `revoked`."""
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self._ca_cert.subject)
            .last_update(now - datetime.timedelta(minutes=5))
            .next_update(now + datetime.timedelta(days=1))
        )
        for path in revoked:
            serial = x509.load_pem_x509_certificate(path.read_bytes()).serial_number
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
            )
        path = self.directory / self._file("ca.crl")
        path.write_bytes(builder.sign(self._ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
        return path

    def _file(self, name: str) -> str:
        return name if self.label == "test" else f"{self.label}-{name}"

    def issue(
        self, name: str, *, server: bool = False, not_after: datetime.datetime | None = None
    ) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        not_after = not_after or self._not_after
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(self._ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(min(self._not_before, not_after - datetime.timedelta(days=1)))
            .not_valid_after(not_after)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
        cert = builder.sign(self._ca_key, hashes.SHA256())
        cert_path, key_path = self.directory / f"{name}.crt", self.directory / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_key_pem(key))
        return cert_path, key_path


class Broker:
    """mosquitto -c <conf> on 127.0.0.1:<port>; start() / stop() can be repeated on the
    same port (the outage test). Always stopped by close()."""

    def __init__(self, mosquitto: str, mosquitto_passwd: str, extra_conf: str = "", *, shipped: bool = False) -> None:
        """shipped: run conf/mosquitto/mosquitto.conf itself (its paths pointed here): the
        concentrator's listener on `port` (certificate from the test CA, which also signs
        the broker's), the viewers' on `viewer_port` (certificates of every other user,
        "revoked" among them, from the viewers' CA, whose CRL revokes "revoked"), each with
        its own password file."""
        # Not under pytest's tmp_path: its parents are 0700 and mosquitto, started as
        # root, drops to the `mosquitto` user, which must read these files.
        self.directory = Path(tempfile.mkdtemp(prefix="mqtt-test-"))
        os.chmod(self.directory, 0o755)
        self.mosquitto = mosquitto
        self.port = free_tcp_port()
        self.shipped = shipped
        self.viewer_port = free_tcp_port() if shipped else self.port
        self.pki = Pki(self.directory)
        server_cert, server_key = self.pki.issue("broker", server=True)
        self.viewer_pki = Pki(self.directory, "viewers") if shipped else self.pki
        self.clients = {
            user: (self.pki if user == "concentrator" else self.viewer_pki).issue(user) for user in PASSWORDS
        }
        self.passwd_path = self.directory / "passwd"
        self._passwd(mosquitto_passwd, self.passwd_path, PASSWORDS if not shipped else {"concentrator"})
        acl = self.directory / "acl"
        acl.write_text(ACL)
        self.conf = self.directory / "mosquitto.conf"
        if shipped:
            self.clients["revoked"] = self.viewer_pki.issue("revoked")
            viewers_passwd = self.directory / "viewers.passwd"
            self._passwd(mosquitto_passwd, viewers_passwd, set(PASSWORDS) - {"concentrator"})
            self.conf.write_text(self._shipped(viewers_passwd, acl, server_cert, server_key))
        else:
            self._write_conf(self.passwd_path, acl, server_cert, server_key, extra_conf)
        if os.geteuid() == 0:
            shutil.chown(self.directory, "mosquitto")  # persistence: mosquitto writes its database here
        for path in self.directory.iterdir():
            os.chmod(path, 0o644)
            if os.geteuid() == 0:
                shutil.chown(path, "mosquitto")
                if path.suffix in (".key", ".passwd") or path.name == "passwd":
                    os.chmod(path, 0o600)
        # The concentrator's own key is read by the test process (root): fine at 0600.
        self.log = self.directory / "mosquitto.log"
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def _passwd(mosquitto_passwd: str, path: Path, users: Iterable[str]) -> None:
        path.touch()
        for user in users:
            subprocess.run([mosquitto_passwd, "-b", str(path), user, PASSWORDS[user]], check=True, capture_output=True)

    def port_for(self, user: str) -> int:
        """The listener a user connects to (the shipped broker has one for the concentrator
        and one for viewers)."""
        return self.port if user == "concentrator" else self.viewer_port

    def _write_conf(self, passwd: Path, acl: Path, cert: Path, key: Path, extra_conf: str) -> None:
        # As the shipped file, but users authenticated by password (certificate required,
        # not bound to the user), so that password refusals can be tested too.
        self.conf.write_text(
            f"""per_listener_settings false
allow_anonymous false
password_file {passwd}
acl_file {acl}
persistence true
persistence_location {self.directory}/
log_dest stderr
log_type error
log_type warning
log_type notice
log_type information
{extra_conf}
listener {self.port} 127.0.0.1
cafile {self.pki.ca}
certfile {cert}
keyfile {key}
require_certificate true
use_identity_as_username false
tls_version tlsv1.2
"""
        )

    def _shipped(self, viewers_passwd: Path, acl: Path, cert: Path, key: Path) -> str:
        """The shipped file with its paths pointed here: per key, the values of its
        occurrences in order (the concentrator's listener, then the viewers')."""
        paths = {
            "password_file ": [self.passwd_path, viewers_passwd],
            "acl_file ": [acl, acl],
            "persistence_location ": [f"{self.directory}/"],
            "log_dest ": ["stderr"],
            "listener ": [f"{self.port} 127.0.0.1", f"{self.viewer_port} 127.0.0.1"],
            "cafile ": [self.pki.ca, self.viewer_pki.ca],
            "crlfile ": [self.pki.crl([]), self.viewer_pki.crl([self.clients["revoked"][0]])],
            "certfile ": [cert, cert],
            "keyfile ": [key, key],
        }
        lines = SHIPPED_CONF.read_text().splitlines()
        for prefix, values in paths.items():
            where = [i for i, text in enumerate(lines) if text.startswith(prefix)]
            assert len(where) == len(values), f"{SHIPPED_CONF}: {prefix.strip()} {len(where)} times"
            for index, value in zip(where, values, strict=True):
                lines[index] = f"{prefix}{value}"
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 10.0) -> None:
        assert self.process is None
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([self.mosquitto, "-c", str(self.conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        waiting = {self.port, self.viewer_port}  # mosquitto opens its listeners one after the other
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log.read_text()}")
            for port in sorted(waiting):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    waiting.discard(port)
                except OSError:
                    pass
            if not waiting:
                return
            time.sleep(0.02)
        raise RuntimeError(f"mosquitto not listening on {sorted(waiting)} after {timeout} s: {self.log.read_text()}")

    def freeze(self) -> None:
        """SIGSTOP: the broker's kernel still accepts and buffers, the broker does nothing."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGCONT)  # a frozen broker cannot handle SIGTERM
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def client_files(self, user: str) -> tuple[Path, Path]:
        return self.clients[user]

    def tls_context(self, user: str | None, *, tls11: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.pki.ca))
        if tls11:
            # Offer TLS 1.1 only; allow it locally (Debian's OpenSSL default security level
            # refuses it) so that the refusal we see is the broker's.
            context.set_ciphers("DEFAULT:@SECLEVEL=0")
            context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
        if user is not None:
            cert, key = self.clients[user]
            context.load_cert_chain(str(cert), str(key))
        return context
