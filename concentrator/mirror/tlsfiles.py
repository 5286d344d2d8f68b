"""Check the mirror's TLS files before using them: each loads, the key belongs to the
certificate, the certificate chains to the CA file, and the dates. Says what is wrong,
with the key of the `mqtt.tls` section to fix.

Structural problems (unreadable, mismatched, foreign chain) are configuration mistakes:
the configuration is refused. Dates are not: a certificate expires while the relay runs,
and relaying to the BMI must not stop for the mirror, so `check-config` reports them as
warnings (exit 0: the service's ExecStartPre check lets the relay start) and the relay
logs them as errors at start (the broker then refuses the connection, which the mirror
logs as such).
"""

from __future__ import annotations

import datetime
import ssl
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes


@dataclass(frozen=True)
class TlsProblem:
    key: str  # ca_file, cert_file or key_file
    expected: str
    got: str
    dated: bool = False  # a validity date, not a mistake in the files


def _certificates(path: str, key: str, what: str) -> list[x509.Certificate] | TlsProblem:
    try:
        with open(path, "rb") as f:
            certificates = x509.load_pem_x509_certificates(f.read())
    except (OSError, ValueError) as exc:
        return TlsProblem(key, what, f"unreadable as PEM certificates: {exc}")
    return certificates


def _describe(certificate: x509.Certificate) -> str:
    return certificate.subject.rfc4514_string() or "(empty subject)"


def _dates(certificate: x509.Certificate, key: str, now: datetime.datetime) -> TlsProblem | None:
    if now < certificate.not_valid_before_utc:
        return TlsProblem(key, "a certificate valid now", f"{_describe(certificate)} is valid only from "
                          f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC", dated=True)  # fmt: skip
    if now > certificate.not_valid_after_utc:
        return TlsProblem(key, "a certificate valid now", f"{_describe(certificate)} expired on "
                          f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC", dated=True)  # fmt: skip
    return None


def _issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def check_tls_files(ca_file: str, cert_file: str, key_file: str, now: datetime.datetime) -> list[TlsProblem]:
    """Every problem found (empty: the files are fine)."""
    problems: list[TlsProblem] = []
    cas = _certificates(ca_file, "ca_file", "the PEM certificate(s) of the CA that signs the broker's certificate")
    if isinstance(cas, TlsProblem):
        problems.append(cas)
        cas = []
    for ca in cas:
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value if any(
            e.oid == x509.BasicConstraints.oid for e in ca.extensions) else None  # fmt: skip
        if constraints is None or not constraints.ca:
            problems.append(TlsProblem("ca_file", "CA certificates", f"{_describe(ca)} is not a CA certificate"))
        if (problem := _dates(ca, "ca_file", now)) is not None:
            problems.append(problem)

    chain = _certificates(cert_file, "cert_file", "our PEM X.509 certificate (then any intermediate CAs)")
    if isinstance(chain, TlsProblem):
        return [*problems, chain]
    ours = chain[0]
    for certificate in chain:
        if (problem := _dates(certificate, "cert_file", now)) is not None:
            problems.append(problem)

    try:
        with open(key_file, "rb") as f:
            key: PrivateKeyTypes = serialization.load_pem_private_key(f.read(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        return [*problems, TlsProblem("key_file", "an unencrypted PEM private key", f"unreadable: {exc}")]
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*raw) != ours.public_key().public_bytes(*raw):
        problems.append(TlsProblem("key_file", f"the private key of the certificate in {cert_file}",
                                   "a key that does not match that certificate"))  # fmt: skip

    # Our certificate must lead, through intermediates in cert_file, to a CA in ca_file
    # (one private CA for the broker and its clients, as in conf/mosquitto/).
    current, pool = ours, chain[1:]
    for _ in range(len(chain)):
        if any(_issued_by(current, ca) for ca in cas):
            break
        issuer = next((c for c in pool if _issued_by(current, c)), None)
        if issuer is None:
            problems.append(TlsProblem("cert_file", f"a certificate issued by a CA in {ca_file}",
                                       f"{_describe(ours)}, issued by {current.issuer.rfc4514_string()}"))  # fmt: skip
            break
        current = issuer
        pool.remove(issuer)

    if not problems:  # what the mirror does with them: OpenSSL must accept them too
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
            context.load_cert_chain(cert_file, key_file)
        except ssl.SSLError as exc:
            problems.append(TlsProblem("cert_file", "a certificate and key OpenSSL accepts", str(exc)))
    return problems
