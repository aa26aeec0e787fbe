"""The cluster PKI (cryptography): one CA per fleet, a certificate per node, mutual-TLS contexts.

A node's identity is the URI SAN ``greenferry://node/<name>`` of its certificate (the CN as a fallback).
Every node certificate is both a TLS server and a TLS client certificate, so one file pair serves the peer
API and the calls this node makes to its peers. The same key signs the node's checkpoint manifests
(:func:`sign_bytes`, :func:`verify_signature`). See docs/security.md for the trust model.

Files: ``init_ca`` writes ``ca.crt`` and ``ca.key`` into the CA directory; ``issue_node_cert`` writes
``<node>.crt``, ``<node>.key`` and a copy of ``ca.crt`` into the node's directory. Keys are mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import re
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from greenferry.errors import ConfigError, PayloadError

if TYPE_CHECKING:
    from aiohttp import web

logger = logging.getLogger(__name__)

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "NODE_NAME_RE",
    "NODE_URI_PREFIX",
    "CaPaths",
    "CertificateSummary",
    "NodeCertPaths",
    "certificate_public_key",
    "certificate_summary",
    "client_ssl_context",
    "init_ca",
    "is_dns_name",
    "issue_node_cert",
    "load_private_key",
    "peer_node_name",
    "request_peer_node_name",
    "server_ssl_context",
    "sign_bytes",
    "validate_node_name",
    "verify_node_certificate",
    "verify_signature",
]

CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
NODE_URI_PREFIX = "greenferry://node/"
# The same pattern as config's node names (greenferry.config._NAME_RE): names appear in topics and file names.
NODE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME_RE = re.compile(rf"^{_DNS_LABEL}(?:\.{_DNS_LABEL})*$")
_MAX_DNS_NAME_CHARS = 253
_MAX_CN_CHARS = 64
# Certificates start this long before "now": a peer whose clock is a little behind still accepts them.
CLOCK_SKEW_ALLOWANCE_S = 3600.0
_KEY_MODE = 0o600
_CERT_MODE = 0o644
_DIR_MODE = 0o700


@dataclass(frozen=True)
class CaPaths:
    """Where the cluster CA's certificate and private key live."""

    cert: Path
    key: Path

    @classmethod
    def in_dir(cls, directory: Path | str) -> CaPaths:
        """The CA files ``ca.crt`` and ``ca.key`` in ``directory``."""
        base = Path(directory)
        return cls(base / CA_CERT_FILE, base / CA_KEY_FILE)


@dataclass(frozen=True)
class NodeCertPaths:
    """One node's TLS files ([peer.tls] in its config): the cluster CA bundle, its certificate and key."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def in_dir(cls, directory: Path | str, node: str) -> NodeCertPaths:
        """The files ``issue_node_cert`` writes for ``node`` into ``directory``.

        Raises:
            ConfigError: ``node`` is not a valid node name.
        """
        validate_node_name(node)
        base = Path(directory)
        return cls(base / CA_CERT_FILE, base / f"{node}.crt", base / f"{node}.key")


@dataclass(frozen=True)
class CertificateSummary:
    """What a certificate says, for people: subject CN, SAN entries, validity (UTC) and whether it is a CA."""

    common_name: str
    sans: tuple[str, ...]
    not_before: dt.datetime
    not_after: dt.datetime
    is_ca: bool


def validate_node_name(node: str) -> str:
    """Check a node name (letters, digits, ``_.-``; 1 to 63 characters, not starting with ``_.-``).

    Returns:
        The name, unchanged.

    Raises:
        ConfigError: the name does not match :data:`NODE_NAME_RE`.
    """
    if not isinstance(node, str) or not NODE_NAME_RE.fullmatch(node):
        raise ConfigError(
            f"node name {node!r}: use 1 to 63 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return node


def is_dns_name(text: str) -> bool:
    """Whether ``text`` is a DNS host name a certificate can carry (dot-separated labels, no wildcard)."""
    return len(text) <= _MAX_DNS_NAME_CHARS and _DNS_NAME_RE.fullmatch(text) is not None


# ----------------------------------------------------------------------------------------------- creation


def init_ca(
    directory: Path | str,
    *,
    name: str = "greenferry cluster CA",
    days: int = 3650,
    now: dt.datetime | None = None,
    force: bool = False,
) -> CaPaths:
    """Create the cluster CA: an EC P-256 key (mode 0600) and a self-signed CA certificate in ``directory``.

    Args:
        directory: where ``ca.crt`` and ``ca.key`` go (created, mode 0700, if missing).
        name: the CA's common name.
        days: validity from ``now`` (days).
        now: the issue time (timezone-aware; default: the current UTC time).
        force: replace an existing CA (every node certificate it signed stops being trusted).

    Returns:
        The paths written.

    Raises:
        ConfigError: a CA already exists there (without ``force``), bad ``name``/``days``/``now``, or the
            files cannot be written.
    """
    paths = CaPaths.in_dir(directory)
    if not name.strip() or len(name) > _MAX_CN_CHARS:
        raise ConfigError(f"CA name {name!r}: use 1 to {_MAX_CN_CHARS} characters")
    issued_at = _issue_time(now)
    validity = _validity_days(days)
    if not force:
        for path in (paths.cert, paths.key):
            if path.exists():
                raise ConfigError(
                    f"{path} already exists: a cluster CA is already set up in {paths.cert.parent}; "
                    "pass --force (force=True) to replace it, which invalidates every node certificate "
                    "it signed"
                )
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "greenferry"),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    public_key = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(issued_at - dt.timedelta(seconds=CLOCK_SKEW_ALLOWANCE_S))
        .not_valid_after(issued_at + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    _make_dir(paths.cert.parent)
    _write_file(paths.key, _key_pem(key), _KEY_MODE)
    _write_file(paths.cert, cert.public_bytes(serialization.Encoding.PEM), _CERT_MODE)
    logger.info(
        "created cluster CA %r in %s, valid until %s", name, paths.cert.parent, cert.not_valid_after_utc
    )
    return paths


def issue_node_cert(
    ca_dir: Path | str,
    node: str,
    *,
    hosts: Sequence[str],
    out_dir: Path | str,
    days: int = 825,
    now: dt.datetime | None = None,
    force: bool = False,
) -> NodeCertPaths:
    """Issue a node certificate signed by the cluster CA, for both ends of mutual TLS.

    The certificate has CN=``node``, SANs for each host plus the URI ``greenferry://node/<node>``, EKU
    serverAuth and clientAuth, and a fresh EC P-256 key (mode 0600). A copy of ``ca.crt`` goes next to it.

    Args:
        ca_dir: the directory ``init_ca`` wrote.
        node: the node's name (as in its config).
        hosts: DNS names and IP addresses peers use to reach the node (at least one).
        out_dir: where ``<node>.crt``, ``<node>.key`` and ``ca.crt`` go (created, mode 0700, if missing).
        days: validity from ``now`` (days); it must end before the CA's.
        now: the issue time (timezone-aware; default: the current UTC time).
        force: replace this node's existing files (rotation).

    Returns:
        The paths written.

    Raises:
        ConfigError: bad node name, host, ``days`` or ``now``; no usable CA in ``ca_dir``; the CA is not valid
            at ``now`` or would expire first; the files exist (without ``force``) or cannot be written.
    """
    validate_node_name(node)
    if f"{node}.crt".lower() == CA_CERT_FILE:
        raise ConfigError(
            f"node name {node!r}: its files would clash with the CA's {CA_CERT_FILE}; rename it"
        )
    sans = _host_sans(hosts)
    issued_at = _issue_time(now)
    validity = _validity_days(days)
    ca_paths = CaPaths.in_dir(ca_dir)
    ca_cert_pem, ca_cert = _read_ca_cert(ca_paths.cert)
    ca_key = load_private_key(ca_paths.key)
    if ca_key.public_key().public_numbers() != _ec_public_key(ca_cert, str(ca_paths.cert)).public_numbers():
        raise ConfigError(f"{ca_paths.key} is not the private key of {ca_paths.cert}")
    not_after = issued_at + validity
    if not ca_cert.not_valid_before_utc <= issued_at <= ca_cert.not_valid_after_utc:
        raise ConfigError(
            f"{ca_paths.cert}: the CA is valid from {ca_cert.not_valid_before_utc} to "
            f"{ca_cert.not_valid_after_utc}, not at {issued_at}; create a new CA "
            "(docs/security.md, rotation)"
        )
    if not_after > ca_cert.not_valid_after_utc:
        max_days = (ca_cert.not_valid_after_utc - issued_at) // dt.timedelta(days=1)
        raise ConfigError(
            f"a {days}-day node certificate would outlive the CA ({ca_paths.cert} expires "
            f"{ca_cert.not_valid_after_utc}): use at most {max_days} days, or rotate the CA"
        )
    paths = NodeCertPaths.in_dir(out_dir, node)
    if not force:
        for path in (paths.cert, paths.key):
            if path.exists():
                raise ConfigError(
                    f"{path} already exists: node {node!r} already has a certificate there; "
                    "pass --force (force=True) to replace it"
                )
        if paths.ca.exists() and _read_bytes(paths.ca, "CA certificate") != ca_cert_pem:
            raise ConfigError(
                f"{paths.ca} exists and is not the CA certificate {ca_paths.cert}; "
                "pass --force (force=True) to replace it"
            )

    key = ec.generate_private_key(ec.SECP256R1())
    public_key = key.public_key()
    ca_ski = _extension(ca_cert, x509.SubjectKeyIdentifier)
    aki = (
        x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
        if ca_ski is not None
        else x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(issued_at - dt.timedelta(seconds=CLOCK_SKEW_ALLOWANCE_S))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName([*sans, x509.UniformResourceIdentifier(NODE_URI_PREFIX + node)]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(aki, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _make_dir(paths.cert.parent)
    _write_file(paths.key, _key_pem(key), _KEY_MODE)
    _write_file(paths.cert, cert.public_bytes(serialization.Encoding.PEM), _CERT_MODE)
    if force or not paths.ca.exists():
        _write_file(paths.ca, ca_cert_pem, _CERT_MODE)
    logger.info("issued node certificate for %r in %s, valid until %s", node, paths.cert, not_after)
    return paths


# --------------------------------------------------------------------------------------------- TLS contexts


def server_ssl_context(paths: NodeCertPaths) -> ssl.SSLContext:
    """A TLS server context for the peer API: TLS >= 1.2, a client certificate from the cluster CA required.

    Args:
        paths: this node's CA bundle, certificate and key.

    Returns:
        The context (pass it as ``ssl_context`` to aiohttp's ``TCPSite``).

    Raises:
        ConfigError: a file is missing or unreadable, the key does not match the certificate, or the
            certificate is not signed by the CA bundle.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.verify_mode = ssl.CERT_REQUIRED
    _harden(context)
    _load(context, paths)
    return context


def client_ssl_context(paths: NodeCertPaths) -> ssl.SSLContext:
    """A TLS client context for calling peers: the server must be signed by the cluster CA and match the host.

    Only the cluster CA is trusted (not the system store); this node's certificate is presented to the peer.

    Args:
        paths: this node's CA bundle, certificate and key.

    Returns:
        The context (pass it as ``ssl`` to aiohttp's ``TCPConnector`` or request).

    Raises:
        ConfigError: as for :func:`server_ssl_context`.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = True
    _harden(context)
    _load(context, paths)
    return context


def _harden(context: ssl.SSLContext) -> None:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    context.options |= ssl.OP_NO_COMPRESSION
    # TLS 1.2 suites with forward secrecy and AEAD only (TLS 1.3 suites are all of that already).
    context.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20")


def _load(context: ssl.SSLContext, paths: NodeCertPaths) -> None:
    ca_certs = _read_ca_bundle(paths.ca)
    cert = _read_cert(paths.cert, "node certificate")
    if not any(_issued_by(cert, ca) for ca in ca_certs):
        raise ConfigError(f"{paths.cert} is not signed by the cluster CA in {paths.ca}")
    now = dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        logger.warning(
            "%s is valid from %s to %s, not now: peers will refuse it; issue a new one "
            "(greenferry certs issue --force)",
            paths.cert,
            cert.not_valid_before_utc,
            cert.not_valid_after_utc,
        )
    try:
        context.load_verify_locations(cafile=str(paths.ca))
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(f"{paths.ca}: cannot load the cluster CA: {err}") from err
    try:
        context.load_cert_chain(certfile=str(paths.cert), keyfile=str(paths.key))
    except FileNotFoundError as err:
        raise ConfigError(f"{paths.key}: node private key not found") from err
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(
            f"{paths.cert} with {paths.key}: cannot load the certificate and key "
            f"(is the key the certificate's?): {err}"
        ) from err


# ----------------------------------------------------------------------------------------------- identity

PeerCertificate = ssl.SSLObject | ssl.SSLSocket | x509.Certificate | bytes | str | Mapping[str, Any]


def peer_node_name(peer: PeerCertificate) -> str:
    """The node name of a verified peer certificate: its ``greenferry://node/<name>`` URI SAN, else its CN.

    Args:
        peer: the TLS connection (``ssl_object``), a certificate (cryptography, PEM or DER), or Python's
            ``getpeercert()`` dict (aiohttp's ``get_extra_info("peercert")``).

    Returns:
        The node name.

    Raises:
        PayloadError: ``no_peer_certificate`` when the connection has no verified peer certificate;
            ``bad_peer_certificate`` when it is a CA certificate or names no valid node.
    """
    if isinstance(peer, ssl.SSLObject | ssl.SSLSocket):
        if not peer.getpeercert():  # empty when the peer sent none or it was not verified
            raise PayloadError("no_peer_certificate", "the peer presented no verified certificate")
        der = peer.getpeercert(binary_form=True)
        if der is None:
            raise PayloadError("no_peer_certificate", "the peer presented no certificate")
        return _node_name_of(_parse_cert(der))
    if isinstance(peer, Mapping):
        return _node_name_of_dict(peer)
    if isinstance(peer, x509.Certificate):
        return _node_name_of(peer)
    return _node_name_of(_parse_cert(peer))


def request_peer_node_name(request: web.BaseRequest) -> str:
    """The node name of the peer that sent an aiohttp request over mutual TLS.

    Raises:
        PayloadError: ``no_peer_certificate`` when the request came over plain HTTP or without a verified
            client certificate; ``bad_peer_certificate`` as for :func:`peer_node_name`.
    """
    transport = request.transport
    if transport is None:
        raise PayloadError("no_peer_certificate", "the connection is closed")
    ssl_object = transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        raise PayloadError("no_peer_certificate", "the request did not come over TLS")
    return peer_node_name(ssl_object)


def _node_name_of(cert: x509.Certificate) -> str:
    basic = _extension(cert, x509.BasicConstraints)
    if basic is not None and basic.ca:
        raise PayloadError("bad_peer_certificate", "a CA certificate is not a node identity")
    san = _extension(cert, x509.SubjectAlternativeName)
    uris = san.get_values_for_type(x509.UniformResourceIdentifier) if san is not None else []
    common_names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return _pick_name(uris, common_names)


def _node_name_of_dict(peercert: Mapping[str, Any]) -> str:
    if not peercert:
        raise PayloadError("no_peer_certificate", "the peer presented no verified certificate")
    uris = [str(value) for kind, value in peercert.get("subjectAltName", ()) if kind == "URI"]
    common_names = [
        str(value) for rdn in peercert.get("subject", ()) for key, value in rdn if key == "commonName"
    ]
    return _pick_name(uris, common_names)


def _pick_name(uris: Sequence[str], common_names: Sequence[str]) -> str:
    node_uris = [uri for uri in uris if uri.startswith(NODE_URI_PREFIX)]
    if len(node_uris) > 1:
        raise PayloadError("bad_peer_certificate", f"more than one node URI: {', '.join(node_uris)}")
    if node_uris:
        name = node_uris[0].removeprefix(NODE_URI_PREFIX)
        where = f"URI SAN {node_uris[0]!r}"
    elif len(common_names) == 1:
        name = common_names[0]
        where = f"CN {name!r}"
    else:
        raise PayloadError("bad_peer_certificate", "no greenferry node URI and not exactly one CN")
    if not NODE_NAME_RE.fullmatch(name):
        raise PayloadError("bad_peer_certificate", f"{where} is not a valid node name")
    return name


def verify_node_certificate(
    ca_bundle_pem: bytes, cert: x509.Certificate | bytes | str, *, now: dt.datetime | None = None
) -> str:
    """Check that a node certificate (e.g. a manifest signer's) is signed by the cluster CA and valid now.

    Args:
        ca_bundle_pem: the cluster CA certificate(s), PEM.
        cert: the node certificate (cryptography, PEM or DER).
        now: the time to check validity at (timezone-aware; default: the current UTC time).

    Returns:
        The certificate's node name.

    Raises:
        PayloadError: ``bad_peer_certificate`` when it is not signed by a CA of the bundle, is outside its
            validity, is not a client certificate, or names no valid node.
        ConfigError: ``ca_bundle_pem`` holds no certificate.
    """
    try:
        ca_certs = x509.load_pem_x509_certificates(ca_bundle_pem)
    except ValueError as err:
        raise ConfigError(f"the cluster CA bundle cannot be read: {err}") from err
    node_cert = cert if isinstance(cert, x509.Certificate) else _parse_cert(cert)
    if not any(_issued_by(node_cert, ca) for ca in ca_certs):
        raise PayloadError("bad_peer_certificate", "not signed by the cluster CA")
    at = _issue_time(now)
    if not node_cert.not_valid_before_utc <= at <= node_cert.not_valid_after_utc:
        raise PayloadError(
            "bad_peer_certificate",
            f"valid from {node_cert.not_valid_before_utc} to {node_cert.not_valid_after_utc}, not at {at}",
        )
    name = _node_name_of(node_cert)
    eku = _extension(node_cert, x509.ExtendedKeyUsage)
    if eku is None or ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise PayloadError("bad_peer_certificate", "not a client-authentication certificate")
    return name


# ------------------------------------------------------------------------------------- keys and signatures


def load_private_key(path: Path | str) -> ec.EllipticCurvePrivateKey:
    """Read an unencrypted EC private key (PEM), e.g. a node key for signing manifests.

    Raises:
        ConfigError: the file is missing, unreadable, encrypted, or not an EC private key.
    """
    key_path = Path(path)
    data = _read_bytes(key_path, "private key")
    mode = key_path.stat().st_mode & 0o777
    if mode & 0o077:
        logger.warning("%s is readable by others (mode %04o); chmod 600 it", key_path, mode)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as err:
        raise ConfigError(f"{key_path}: encrypted private keys are not supported") from err
    except (ValueError, UnsupportedAlgorithm) as err:
        raise ConfigError(f"{key_path}: not a PEM private key: {err}") from err
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{key_path}: not an EC private key (greenferry keys are EC P-256)")
    return key


def certificate_public_key(cert_pem_or_der: x509.Certificate | bytes | str) -> ec.EllipticCurvePublicKey:
    """The EC public key of a certificate (PEM or DER), to verify what its node signed.

    Raises:
        PayloadError: ``bad_certificate`` when it is not a certificate or its key is not EC.
    """
    cert = cert_pem_or_der if isinstance(cert_pem_or_der, x509.Certificate) else _parse_cert(cert_pem_or_der)
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise PayloadError("bad_certificate", "the certificate's key is not an EC key")
    return key


def sign_bytes(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """An ECDSA-SHA256 signature (DER) of ``data`` with a node key."""
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def verify_signature(public_key: ec.EllipticCurvePublicKey, signature: bytes, data: bytes) -> None:
    """Check an ECDSA-SHA256 signature made by :func:`sign_bytes`.

    Raises:
        PayloadError: ``bad_signature`` when the signature does not match ``data`` and the key.
    """
    try:
        public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError) as err:
        raise PayloadError("bad_signature", "the signature does not match the data and the signer") from err


def certificate_summary(path: Path | str) -> CertificateSummary:
    """What the certificate file at ``path`` says (the first certificate of a bundle).

    Raises:
        ConfigError: the file is missing or holds no PEM certificate.
    """
    cert = _read_cert(Path(path), "certificate")
    names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    san = _extension(cert, x509.SubjectAlternativeName)
    sans: list[str] = []
    if san is not None:
        sans += [f"URI:{v}" for v in san.get_values_for_type(x509.UniformResourceIdentifier)]
        sans += [f"DNS:{v}" for v in san.get_values_for_type(x509.DNSName)]
        sans += [f"IP:{v}" for v in san.get_values_for_type(x509.IPAddress)]
    basic = _extension(cert, x509.BasicConstraints)
    return CertificateSummary(
        common_name=names[0] if names else "",
        sans=tuple(sans),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        is_ca=basic is not None and basic.ca,
    )


# ---------------------------------------------------------------------------------------------- internals


def _issue_time(now: dt.datetime | None) -> dt.datetime:
    """``now`` in UTC, to the second: certificate times have no fractions."""
    if now is None:
        now = dt.datetime.now(dt.UTC)
    if now.tzinfo is None or now.utcoffset() is None:
        raise ConfigError(f"now={now!r}: give a timezone-aware time (e.g. datetime.now(UTC))")
    return now.astimezone(dt.UTC).replace(microsecond=0)


def _validity_days(days: int) -> dt.timedelta:
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ConfigError(f"days={days!r}: the validity must be a whole number of days, at least 1")
    return dt.timedelta(days=days)


def _host_sans(hosts: Sequence[str]) -> list[x509.GeneralName]:
    if isinstance(hosts, str):
        raise ConfigError(f"hosts={hosts!r}: give a list of host names and addresses, not one string")
    sans: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in hosts:
        text = host.strip() if isinstance(host, str) else ""
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            if not is_dns_name(text):
                raise ConfigError(
                    f"host {host!r}: not an IP address nor a DNS name (labels of letters, digits and '-', "
                    "separated by dots; no wildcards)"
                ) from None
            key = "DNS:" + text.lower()
            general: x509.GeneralName = x509.DNSName(text.lower())
        else:
            key = f"IP:{address}"
            general = x509.IPAddress(address)
        if key not in seen:
            seen.add(key)
            sans.append(general)
    if not sans:
        raise ConfigError("hosts: give at least one DNS name or IP address that peers use to reach the node")
    return sans


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: {what} not found") from err
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the {what}: {err.strerror or err}") from err


def _parse_cert(data: bytes | str) -> x509.Certificate:
    raw = data.encode("ascii", "replace") if isinstance(data, str) else bytes(data)
    try:
        if raw.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(raw)
        return x509.load_der_x509_certificate(raw)
    except ValueError as err:
        raise PayloadError("bad_certificate", f"not a PEM or DER certificate: {err}") from err


def _read_cert(path: Path, what: str) -> x509.Certificate:
    data = _read_bytes(path, what)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as err:
        raise ConfigError(f"{path}: not a PEM certificate: {err}") from err


def _read_ca_bundle(path: Path) -> list[x509.Certificate]:
    data = _read_bytes(path, "cluster CA certificate")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as err:
        raise ConfigError(f"{path}: not a PEM certificate bundle: {err}") from err
    for cert in certs:
        basic = _extension(cert, x509.BasicConstraints)
        if basic is None or not basic.ca:
            raise ConfigError(
                f"{path}: holds a certificate that is not a CA ({cert.subject.rfc4514_string()})"
            )
    return certs


def _read_ca_cert(path: Path) -> tuple[bytes, x509.Certificate]:
    certs = _read_ca_bundle(path)
    if len(certs) != 1:
        raise ConfigError(f"{path}: a CA directory holds exactly one CA certificate, found {len(certs)}")
    return certs[0].public_bytes(serialization.Encoding.PEM), certs[0]


def _ec_public_key(cert: x509.Certificate, where: str) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ConfigError(f"{where}: the CA key is not an EC key")
    return key


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _extension(cert: x509.Certificate, kind: type[Any]) -> Any:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _make_dir(directory: Path) -> None:
    try:
        directory.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{directory}: cannot create the directory: {err.strerror or err}") from err


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` atomically with exactly ``mode``: a key is never readable by others, even briefly."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)  # the umask may have narrowed a certificate's mode
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"{path}: cannot write: {err.strerror or err}") from err
