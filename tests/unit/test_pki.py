"""The cluster PKI: CA and node certificates, TLS contexts, identities, signatures and ``greenferry certs``.

TLS handshakes here run in memory (two ``ssl.MemoryBIO`` pairs, no sockets), so each rejection is checked
for its reason; tests/integration/test_mtls.py repeats the attacks against a real aiohttp HTTPS server.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
import stat
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from greenferry import cli
from greenferry.adapters.pki import (
    CaPaths,
    NodeCertPaths,
    certificate_public_key,
    certificate_summary,
    client_ssl_context,
    init_ca,
    issue_node_cert,
    load_private_key,
    peer_node_name,
    server_ssl_context,
    sign_bytes,
    validate_node_name,
    verify_node_certificate,
    verify_signature,
)
from greenferry.errors import ConfigError, PayloadError
from greenferry.testing.services import make_test_ca

DAY = dt.timedelta(days=1)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@dataclass(frozen=True)
class Fleet:
    """A cluster CA (created 30 days ago) with two nodes, and a second, unrelated CA with its own node."""

    root: Path
    ca: CaPaths
    n1: NodeCertPaths
    n2: NodeCertPaths
    other_ca: CaPaths
    intruder: NodeCertPaths


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    month_ago = _now() - 30 * DAY
    ca = init_ca(tmp_path / "ca", now=month_ago)
    n1 = issue_node_cert(tmp_path / "ca", "n1", hosts=["127.0.0.1", "n1.lan"], out_dir=tmp_path / "n1")
    n2 = issue_node_cert(tmp_path / "ca", "n2", hosts=["127.0.0.1"], out_dir=tmp_path / "n2")
    other_ca = init_ca(tmp_path / "other-ca", name="someone else's CA")
    intruder = issue_node_cert(
        tmp_path / "other-ca", "n2", hosts=["127.0.0.1"], out_dir=tmp_path / "intruder"
    )  # the same node name, the wrong CA
    return Fleet(tmp_path, ca, n1, n2, other_ca, intruder)


# ------------------------------------------------------------------------------------------------------ CA


@pytest.fixture
def open_umask() -> Iterator[None]:
    """Umask 000: the files' modes must come from the code, not from a careful umask."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("open_umask")
def test_init_ca_writes_a_self_signed_p256_ca_whose_key_only_the_owner_reads(tmp_path: Path) -> None:
    now = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    paths = init_ca(tmp_path / "ca", name="fleet CA", days=100, now=now)
    assert paths == CaPaths(tmp_path / "ca" / "ca.crt", tmp_path / "ca" / "ca.key")
    assert _mode(paths.key) == 0o600
    assert _mode(paths.cert) == 0o644
    assert _mode(tmp_path / "ca") == 0o700
    cert = _cert(paths.cert)
    cert.verify_directly_issued_by(cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "fleet CA"
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert basic.value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert usage.crl_sign
    assert not usage.digital_signature  # so it cannot pass for a TLS client or server
    assert cert.not_valid_after_utc == now + 100 * DAY
    assert cert.not_valid_before_utc < now
    key = load_private_key(paths.key)
    assert isinstance(key.curve, ec.SECP256R1)
    assert (
        key.public_key().public_numbers() == certificate_public_key(paths.cert.read_bytes()).public_numbers()
    )


def test_init_ca_refuses_to_overwrite_an_existing_ca_unless_forced(tmp_path: Path) -> None:
    paths = init_ca(tmp_path)
    before = paths.cert.read_bytes(), paths.key.read_bytes()
    with pytest.raises(ConfigError, match=r"ca\.crt already exists.*--force"):
        init_ca(tmp_path)
    assert (paths.cert.read_bytes(), paths.key.read_bytes()) == before
    paths.cert.unlink()  # a CA with only its key left is still a CA not to overwrite
    with pytest.raises(ConfigError, match=r"ca\.key already exists"):
        init_ca(tmp_path)
    init_ca(tmp_path, force=True)
    assert paths.key.read_bytes() != before[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.crt", "ca.key"]  # no temporary files left


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"days": 0}, "days=0"),
        ({"days": -5}, "days=-5"),
        ({"days": 1.5}, "days=1.5"),
        ({"days": True}, "days=True"),
        ({"now": dt.datetime(2030, 1, 1)}, "timezone-aware"),
        ({"name": ""}, "CA name"),
        ({"name": "x" * 65}, "CA name"),
    ],
)
def test_init_ca_rejects_bad_arguments_by_name(tmp_path: Path, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        init_ca(tmp_path, **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "ca.key").exists()


# --------------------------------------------------------------------------------------------------- nodes


@pytest.mark.usefixtures("open_umask")
def test_a_node_certificate_names_the_node_and_its_hosts_and_serves_both_ends(tmp_path: Path) -> None:
    now = _now()
    ca = init_ca(tmp_path / "ca", now=now)
    paths = issue_node_cert(
        tmp_path / "ca",
        "gpu-box.1",
        hosts=["GPU-Box.LAN", "10.0.0.7", "fd00::7", "gpu-box.lan", "10.0.0.7"],
        out_dir=tmp_path / "out",
        now=now,
    )
    assert paths == NodeCertPaths(
        tmp_path / "out" / "ca.crt", tmp_path / "out" / "gpu-box.1.crt", tmp_path / "out" / "gpu-box.1.key"
    )
    assert _mode(paths.key) == 0o600
    assert _mode(paths.cert) == 0o644
    assert paths.ca.read_bytes() == ca.cert.read_bytes()
    cert, ca_cert = _cert(paths.cert), _cert(ca.cert)
    cert.verify_directly_issued_by(ca_cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "gpu-box.1"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["gpu-box.lan"]  # lower-cased, duplicates dropped
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.7"),
        ipaddress.ip_address("fd00::7"),
    ]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["greenferry://node/gpu-box.1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert cert.not_valid_after_utc == now.replace(microsecond=0) + 825 * DAY
    key = load_private_key(paths.key)
    assert isinstance(key.curve, ec.SECP256R1)
    assert key.public_key().public_numbers() == certificate_public_key(cert).public_numbers()
    summary = certificate_summary(paths.cert)
    assert summary.common_name == "gpu-box.1"
    assert "URI:greenferry://node/gpu-box.1" in summary.sans
    assert not summary.is_ca


@pytest.mark.parametrize("name", ["", "-n1", ".n1", "_n1", "n 1", "n1/x", "../etc", "n1\n", "ñode", "x" * 64])
def test_bad_node_names_are_refused_by_name(tmp_path: Path, name: str) -> None:
    init_ca(tmp_path / "ca")
    with pytest.raises(ConfigError, match="node name"):
        issue_node_cert(tmp_path / "ca", name, hosts=["127.0.0.1"], out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["n", "N1", "site-2.gpu_7", "x" * 63])
def test_good_node_names_pass(name: str) -> None:
    assert validate_node_name(name) == name


def test_a_node_named_ca_is_refused_because_its_files_would_clash(tmp_path: Path) -> None:
    init_ca(tmp_path / "ca")
    with pytest.raises(ConfigError, match="clash"):
        issue_node_cert(tmp_path / "ca", "CA", hosts=["127.0.0.1"], out_dir=tmp_path / "ca")


@pytest.mark.parametrize(
    ("hosts", "match"),
    [
        ([], "at least one"),
        ("n1.lan", "not one string"),
        (["*.lan"], r"'\*\.lan'"),
        (["a..b"], "'a..b'"),
        (["-a.lan"], "'-a.lan'"),
        (["https://n1.lan"], "'https://n1.lan'"),
        (["n1.lan", ""], "''"),
        (["a" * 64 + ".lan"], "not an IP address nor a DNS name"),
        (["n1_x.lan"], "'n1_x.lan'"),
    ],
)
def test_bad_hosts_are_refused_by_name(tmp_path: Path, hosts: list[str], match: str) -> None:
    init_ca(tmp_path / "ca")
    with pytest.raises(ConfigError, match=match):
        issue_node_cert(tmp_path / "ca", "n1", hosts=hosts, out_dir=tmp_path / "out")


def test_a_node_certificate_cannot_outlive_its_ca(tmp_path: Path) -> None:
    now = _now()
    init_ca(tmp_path / "ca", days=30, now=now)
    with pytest.raises(ConfigError, match=r"outlive the CA.*at most 29 days"):
        issue_node_cert(tmp_path / "ca", "n1", hosts=["n1"], out_dir=tmp_path / "out", days=31, now=now + DAY)
    issue_node_cert(tmp_path / "ca", "n1", hosts=["n1"], out_dir=tmp_path / "out", days=29, now=now + DAY)


def test_a_ca_that_expired_or_is_not_yet_valid_issues_nothing(tmp_path: Path) -> None:
    now = _now()
    init_ca(tmp_path / "ca", days=10, now=now)
    for moment in (now + 11 * DAY, now - 2 * DAY):
        with pytest.raises(ConfigError, match="the CA is valid from"):
            issue_node_cert(tmp_path / "ca", "n1", hosts=["n1"], out_dir=tmp_path / "out", days=1, now=moment)


def test_issue_refuses_to_overwrite_a_node_unless_forced(fleet: Fleet) -> None:
    before = fleet.n1.key.read_bytes()
    with pytest.raises(ConfigError, match=r"n1\.crt already exists.*--force"):
        issue_node_cert(fleet.root / "ca", "n1", hosts=["127.0.0.1"], out_dir=fleet.n1.cert.parent)
    assert fleet.n1.key.read_bytes() == before
    rotated = issue_node_cert(
        fleet.root / "ca", "n1", hosts=["127.0.0.1"], out_dir=fleet.n1.cert.parent, force=True
    )
    assert rotated == fleet.n1
    assert fleet.n1.key.read_bytes() != before


def test_issue_refuses_to_replace_another_cas_certificate_in_the_output(fleet: Fleet) -> None:
    with pytest.raises(ConfigError, match=r"ca\.crt exists and is not the CA certificate"):
        issue_node_cert(fleet.root / "other-ca", "n3", hosts=["n3"], out_dir=fleet.n1.cert.parent)
    assert fleet.n1.ca.read_bytes() == fleet.ca.cert.read_bytes()
    # Nodes of one CA may share an output directory: the identical ca.crt is kept.
    issue_node_cert(fleet.root / "ca", "n3", hosts=["n3"], out_dir=fleet.n1.cert.parent)
    assert (fleet.n1.cert.parent / "n3.key").exists()


def test_issue_without_a_ca_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nowhere/ca\.crt: cluster CA certificate not found"):
        issue_node_cert(tmp_path / "nowhere", "n1", hosts=["n1"], out_dir=tmp_path / "out")


def test_issue_refuses_a_ca_key_that_is_not_the_certificates(fleet: Fleet) -> None:
    fleet.ca.key.write_bytes(fleet.other_ca.key.read_bytes())
    with pytest.raises(ConfigError, match=r"ca\.key is not the private key of .*ca\.crt"):
        issue_node_cert(fleet.root / "ca", "n3", hosts=["n3"], out_dir=fleet.root / "n3")


# ------------------------------------------------------------------------------------------------ identity


def _self_signed(common_names: list[str], uris: list[str]) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn) for cn in common_names])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(_now() - DAY)
        .not_valid_after(_now() + DAY)
    )
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]), critical=False
        )
    return builder.sign(key, hashes.SHA256())


def test_peer_node_name_reads_the_uri_san_from_every_form_of_certificate(fleet: Fleet) -> None:
    pem = fleet.n2.cert.read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    der = cert.public_bytes(serialization.Encoding.DER)
    assert peer_node_name(cert) == "n2"
    assert peer_node_name(pem) == "n2"
    assert peer_node_name(pem.decode()) == "n2"
    assert peer_node_name(der) == "n2"
    assert peer_node_name({"subject": ((("commonName", "n2"),),), "subjectAltName": (("URI", "x"),)}) == "n2"


def test_the_uri_san_wins_over_the_cn_and_the_cn_is_the_fallback(tmp_path: Path) -> None:
    assert (
        peer_node_name(_self_signed(["cn-name"], ["https://x", "greenferry://node/uri-name"])) == "uri-name"
    )
    assert peer_node_name(_self_signed(["cn-name"], ["https://elsewhere"])) == "cn-name"
    legacy = make_test_ca(tmp_path)  # CN=localhost, DNS/IP SANs, no greenferry URI
    assert peer_node_name(legacy.cert.read_bytes()) == "localhost"
    peercert = {"subject": ((("commonName", "n7"),),), "subjectAltName": (("DNS", "n7.lan"),)}
    assert peer_node_name(peercert) == "n7"


@pytest.mark.parametrize(
    ("common_names", "uris", "match"),
    [
        (["n1"], ["greenferry://node/n1", "greenferry://node/n2"], "more than one node URI"),
        (["n1"], ["greenferry://node/../etc"], "not a valid node name"),
        (["n1"], ["greenferry://node/"], "not a valid node name"),
        (["bad name"], [], "CN 'bad name' is not a valid node name"),
        ([], [], "not exactly one CN"),
        (["n1", "n2"], [], "not exactly one CN"),
    ],
)
def test_certificates_that_name_no_single_valid_node_are_refused(
    common_names: list[str], uris: list[str], match: str
) -> None:
    with pytest.raises(PayloadError, match=match) as exc:
        peer_node_name(_self_signed(common_names, uris))
    assert exc.value.reason == "bad_peer_certificate"


def test_a_ca_certificate_is_no_node_identity(fleet: Fleet) -> None:
    with pytest.raises(PayloadError, match="CA certificate") as exc:
        peer_node_name(fleet.ca.cert.read_bytes())
    assert exc.value.reason == "bad_peer_certificate"


def test_no_certificate_and_garbage_are_refused_with_stable_reasons() -> None:
    with pytest.raises(PayloadError) as exc:
        peer_node_name({})
    assert exc.value.reason == "no_peer_certificate"
    with pytest.raises(PayloadError) as exc:
        peer_node_name(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    assert exc.value.reason == "bad_certificate"
    with pytest.raises(PayloadError) as exc:
        certificate_public_key(b"\x30\x03\x02\x01\x00")
    assert exc.value.reason == "bad_certificate"


def test_verify_node_certificate_accepts_only_valid_members_of_the_cluster(fleet: Fleet) -> None:
    bundle = fleet.ca.cert.read_bytes()
    assert verify_node_certificate(bundle, fleet.n2.cert.read_bytes()) == "n2"
    with pytest.raises(PayloadError, match="not signed by the cluster CA"):
        verify_node_certificate(bundle, fleet.intruder.cert.read_bytes())
    with pytest.raises(PayloadError, match="not at"):
        verify_node_certificate(bundle, fleet.n2.cert.read_bytes(), now=_now() + 900 * DAY)
    with pytest.raises(PayloadError, match="CA certificate"):
        verify_node_certificate(bundle, bundle)  # self-signed by the CA itself, but no node
    rotated = bundle + fleet.other_ca.cert.read_bytes()  # during a CA rotation both are trusted
    assert verify_node_certificate(rotated, fleet.intruder.cert.read_bytes()) == "n2"
    with pytest.raises(ConfigError, match="CA bundle"):
        verify_node_certificate(b"", fleet.n2.cert.read_bytes())


# ------------------------------------------------------------------------------------- keys and signatures


def test_a_node_key_signs_what_its_certificate_verifies(fleet: Fleet) -> None:
    manifest = b'{"job": "j1", "chunks": ["sha256:00"]}'
    signature = sign_bytes(load_private_key(fleet.n1.key), manifest)
    verify_signature(certificate_public_key(fleet.n1.cert.read_bytes()), signature, manifest)
    for key_of, data, sig in (
        (fleet.n1, manifest + b" ", signature),  # tampered manifest
        (fleet.n2, manifest, signature),  # another node's key
        (fleet.n1, manifest, signature[:-1] + bytes([signature[-1] ^ 1])),  # tampered signature
        (fleet.n1, manifest, b"not DER"),
    ):
        with pytest.raises(PayloadError) as exc:
            verify_signature(certificate_public_key(key_of.cert.read_bytes()), sig, data)
        assert exc.value.reason == "bad_signature"


def test_load_private_key_says_what_is_wrong_with_the_file(tmp_path: Path, fleet: Fleet) -> None:
    with pytest.raises(ConfigError, match=r"missing\.key: private key not found"):
        load_private_key(tmp_path / "missing.key")
    (tmp_path / "cert.key").write_bytes(fleet.n1.cert.read_bytes())
    with pytest.raises(ConfigError, match="not a PEM private key"):
        load_private_key(tmp_path / "cert.key")
    encrypted = load_private_key(fleet.n1.key).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    (tmp_path / "enc.key").write_bytes(encrypted)
    with pytest.raises(ConfigError, match="encrypted private keys are not supported"):
        load_private_key(tmp_path / "enc.key")


# -------------------------------------------------------------------------------------------- TLS contexts


def test_contexts_require_tls_1_2_a_peer_certificate_and_trust_only_the_cluster_ca(fleet: Fleet) -> None:
    server = server_ssl_context(fleet.n1)
    client = client_ssl_context(fleet.n1)
    for context in (server, client):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.verify_flags & ssl.VERIFY_X509_STRICT
        assert [c["subject"] for c in context.get_ca_certs()] == [
            ((("organizationName", "greenferry"),), (("commonName", "greenferry cluster CA"),))
        ]  # no system store
    assert client.check_hostname


def test_contexts_refuse_mismatched_or_missing_files(fleet: Fleet) -> None:
    with pytest.raises(ConfigError, match="not signed by the cluster CA"):
        server_ssl_context(NodeCertPaths(fleet.ca.cert, fleet.intruder.cert, fleet.intruder.key))
    with pytest.raises(ConfigError, match="is the key the certificate's"):
        client_ssl_context(NodeCertPaths(fleet.ca.cert, fleet.n1.cert, fleet.n2.key))
    fleet.n1.key.unlink()
    with pytest.raises(ConfigError, match=r"n1\.key: node private key not found"):
        server_ssl_context(fleet.n1)
    with pytest.raises(ConfigError, match="not a CA"):
        server_ssl_context(NodeCertPaths(fleet.n2.cert, fleet.n2.cert, fleet.n2.key))
    with pytest.raises(ConfigError, match="cluster CA certificate not found"):
        client_ssl_context(NodeCertPaths(fleet.root / "none.crt", fleet.n2.cert, fleet.n2.key))


@dataclass
class Handshake:
    """The outcome of one in-memory TLS handshake: each end's error, and whom each end saw."""

    server_error: ssl.SSLError | None = None
    client_error: ssl.SSLError | None = None
    server_saw: str | None = None
    client_saw: str | None = None

    @property
    def server_reason(self) -> str:
        err = self.server_error
        return str(getattr(err, "verify_message", None) or err)

    @property
    def client_reason(self) -> str:
        err = self.client_error
        return str(getattr(err, "verify_message", None) or err)


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, host: str = "127.0.0.1") -> Handshake:
    """Run a TLS handshake between two contexts through memory buffers, until both finish or one fails."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_ctx.wrap_bio(to_server, to_client, server_side=True)
    client = client_ctx.wrap_bio(to_client, to_server, server_hostname=host)
    result = Handshake()
    done: set[str] = set()
    for _ in range(10):
        for name, end in (("client", client), ("server", server)):
            if name in done:
                continue
            try:
                end.do_handshake()
                done.add(name)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as err:
                setattr(result, f"{name}_error", err)
                return result
        if len(done) == 2:
            result.server_saw = peer_node_name(server)
            result.client_saw = peer_node_name(client)
            return result
    raise AssertionError("the handshake neither finished nor failed")


def attacker_context(cert: Path | None, key: Path | None, trust: Path) -> ssl.SSLContext:
    """A client built with plain ssl: an attacker does not go through greenferry's own checks."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(trust))
    if cert is not None and key is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


@pytest.mark.parametrize("tls", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_two_nodes_of_the_cluster_see_each_others_names(fleet: Fleet, tls: ssl.TLSVersion) -> None:
    client = client_ssl_context(fleet.n2)
    client.maximum_version = tls
    result = handshake(server_ssl_context(fleet.n1), client)
    assert (result.server_error, result.client_error) == (None, None)
    assert (result.server_saw, result.client_saw) == ("n2", "n1")
    assert (
        handshake(server_ssl_context(fleet.n1), client_ssl_context(fleet.n2), host="n1.lan").client_saw
        == "n1"
    )


@pytest.mark.parametrize("tls", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_the_server_refuses_clients_the_cluster_did_not_vouch_for(
    fleet: Fleet, tmp_path: Path, tls: ssl.TLSVersion
) -> None:
    now = _now()
    expired = issue_node_cert(
        fleet.root / "ca", "old", hosts=["127.0.0.1"], out_dir=tmp_path / "old", now=now - 10 * DAY, days=1
    )
    early = issue_node_cert(
        fleet.root / "ca", "early", hosts=["127.0.0.1"], out_dir=tmp_path / "early", now=now + 2 * DAY
    )
    trust = fleet.ca.cert
    attackers = {
        "no certificate": (attacker_context(None, None, trust), "did not return a certificate"),
        "another CA": (
            attacker_context(fleet.intruder.cert, fleet.intruder.key, trust),
            "unable to get local issuer certificate",
        ),
        "expired": (attacker_context(expired.cert, expired.key, trust), "certificate has expired"),
        "not yet valid": (attacker_context(early.cert, early.key, trust), "certificate is not yet valid"),
        "the CA itself": (
            attacker_context(fleet.ca.cert, fleet.ca.key, trust),
            "unsuitable certificate purpose",
        ),
    }
    server = server_ssl_context(fleet.n1)
    for label, (client, reason) in attackers.items():
        client.maximum_version = tls
        result = handshake(server, client)
        assert result.server_error is not None, label
        assert reason in result.server_reason, (label, result.server_reason)
        assert result.server_saw is None


def test_the_server_refuses_tls_below_1_2(fleet: Fleet) -> None:
    client = attacker_context(fleet.n2.cert, fleet.n2.key, fleet.ca.cert)
    client.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the attacker offer TLS 1.1 at all
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client.minimum_version = ssl.TLSVersion.TLSv1_1
        client.maximum_version = ssl.TLSVersion.TLSv1_1
    result = handshake(server_ssl_context(fleet.n1), client)
    assert result.server_error is not None
    assert "unsupported protocol" in result.server_reason


def test_the_client_refuses_servers_that_are_not_the_peer_it_called(fleet: Fleet, tmp_path: Path) -> None:
    now = _now()
    wrong_host = issue_node_cert(fleet.root / "ca", "n3", hosts=["n3.lan"], out_dir=tmp_path / "n3")
    expired = issue_node_cert(
        fleet.root / "ca", "old", hosts=["127.0.0.1"], out_dir=tmp_path / "old", now=now - 10 * DAY, days=1
    )
    impostors = {
        "SAN does not match the address": (wrong_host, "127.0.0.1", "IP address mismatch"),
        "SAN does not match the name": (wrong_host, "n1.lan", "Hostname mismatch"),
        "expired": (expired, "127.0.0.1", "certificate has expired"),
        "another CA": (fleet.intruder, "127.0.0.1", "unable to get local issuer certificate"),
    }
    client = client_ssl_context(fleet.n2)
    for label, (paths, host, reason) in impostors.items():
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # the impostor does not insist on anything
        server.load_cert_chain(str(paths.cert), str(paths.key))
        result = handshake(server, client, host=host)
        assert result.client_error is not None, label
        assert reason in result.client_reason, (label, result.client_reason)
        assert result.client_saw is None


def test_a_ca_bundle_trusts_both_cas_during_a_rotation(fleet: Fleet, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.crt"
    bundle.write_bytes(fleet.ca.cert.read_bytes() + fleet.other_ca.cert.read_bytes())
    server = server_ssl_context(NodeCertPaths(bundle, fleet.n1.cert, fleet.n1.key))
    for member in (fleet.n2, fleet.intruder):
        result = handshake(server, attacker_context(member.cert, member.key, fleet.ca.cert))
        assert result.server_saw == "n2"


# ---------------------------------------------------------------------------------------------------- CLI


@pytest.fixture
def certs_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """``greenferry certs`` in the CLI's table (a no-op once cli.py registers it)."""
    monkeypatch.setitem(cli._COMMAND_MODULES, "certs", "greenferry.commands.certs")


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.usefixtures("certs_cli")
def test_certs_init_writes_the_ca_and_refuses_to_overwrite_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca_dir = tmp_path / "ca"
    code, out, _ = _run(capsys, "certs", "init", "--dir", str(ca_dir))
    assert code == 0
    assert f"wrote {ca_dir / 'ca.key'}" in out
    assert f"wrote {ca_dir / 'ca.crt'}" in out
    assert _mode(ca_dir / "ca.key") == 0o600
    assert _cert(ca_dir / "ca.crt").extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key = (ca_dir / "ca.key").read_bytes()

    code, out, err = _run(capsys, "certs", "init", "--dir", str(ca_dir))
    assert code == 2
    assert "already exists" in err
    assert "--force" in err
    assert (ca_dir / "ca.key").read_bytes() == key

    code, _, _ = _run(capsys, "certs", "init", "--dir", str(ca_dir), "--force", "--days", "30")
    assert code == 0
    assert (ca_dir / "ca.key").read_bytes() != key
    assert _mode(ca_dir / "ca.key") == 0o600


@pytest.mark.usefixtures("certs_cli")
def test_certs_issue_writes_the_node_bundle_and_refuses_to_overwrite_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca_dir = tmp_path / "ca"
    assert _run(capsys, "certs", "init", "--dir", str(ca_dir))[0] == 0
    code, out, _ = _run(
        capsys, "certs", "issue", "n1", "--dir", str(ca_dir), "--host", "n1.lan", "--host", "10.0.0.7"
    )
    assert code == 0
    bundle = ca_dir / "nodes" / "n1"
    for name in ("n1.key", "n1.crt", "ca.crt"):
        assert f"wrote {bundle / name}" in out
    assert "URI:greenferry://node/n1, DNS:n1.lan, IP:10.0.0.7" in out
    assert _mode(bundle / "n1.key") == 0o600
    assert peer_node_name((bundle / "n1.crt").read_bytes()) == "n1"
    key = (bundle / "n1.key").read_bytes()

    code, _, err = _run(capsys, "certs", "issue", "n1", "--dir", str(ca_dir), "--host", "n1.lan")
    assert code == 2
    assert "n1.crt already exists" in err
    assert (bundle / "n1.key").read_bytes() == key
    code, _, _ = _run(capsys, "certs", "issue", "n1", "--dir", str(ca_dir), "--host", "n1.lan", "--force")
    assert code == 0
    assert (bundle / "n1.key").read_bytes() != key

    out_dir = tmp_path / "elsewhere"
    code, out, _ = _run(capsys, "certs", "issue", "n2", "--dir", str(ca_dir), "--out", str(out_dir))
    assert code == 0
    assert "DNS:n2" in out  # without --host, the node name is the host
    assert _mode(out_dir / "n2.key") == 0o600


@pytest.mark.usefixtures("certs_cli")
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["n1", "--host", "n1"], "ca.crt: cluster CA certificate not found"),
        (["../n1", "--host", "n1"], "node name '../n1'"),
        (["gpu_box"], "--host"),
        (["n1", "--host", "*.lan"], "host '*.lan'"),
        (["n1", "--host", "n1", "--days", "0"], "days=0"),
    ],
)
def test_certs_issue_errors_exit_2_naming_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    ca_dir = tmp_path / "ca"
    if "not found" not in message:
        init_ca(ca_dir)
    code, out, err = _run(capsys, "certs", "issue", *argv, "--dir", str(ca_dir))
    assert code == 2
    assert message in err
    assert out == ""
    assert not (ca_dir / "nodes").exists()


@pytest.mark.usefixtures("certs_cli")
def test_certs_without_an_action_prints_usage_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "certs")
    assert code == 2
    assert "init" in out
    assert "issue" in out
