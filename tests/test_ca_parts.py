"""The embedded CA's parts on their own: chain checks, the signer seam,
the issuing policy, the user directory, approvals and revocation."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from estproto import auth
from estproto._events import ConnectionFacts, SimpleEnrollRequest, CertificateResponse, RetryLater
from estproto._paths import Operation
from estproto.ca import CAError, CASettings, EmbeddedCA, IssuingPolicy, KeyFileSigner, Profile, Signer
from estproto.ca.backend import Principal
from estproto.ca.errors import Refused
from estproto.ca.keys import PrivateKey
from estproto.ca.revocation import normalise_serial
from estproto.chain import chain_verifies, issuer_chain
from estproto.codecs import pkcs10

from pki import issue, make_ca, name


def _csr(cn: str = "dev", key: object | None = None, **kwargs: object) -> pkcs10.CertificationRequest:
    key = key or ec.generate_private_key(ec.SECP256R1())
    return pkcs10.decode_csr(pkcs10.build_csr(key, name(cn), **kwargs))  # type: ignore[arg-type]


def _intermediate(root: x509.Certificate, root_key: PrivateKey, *, ca: bool = True) -> tuple[x509.Certificate, PrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name("Sub CA")).issuer_name(root.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(root_key, hashes.SHA256())
    )
    return cert, key


# -- estproto.chain -------------------------------------------------------------


def test_chain_through_an_intermediate() -> None:
    root, root_key = make_ca()
    sub, sub_key = _intermediate(root, root_key)
    leaf = issue(sub, sub_key, ec.generate_private_key(ec.SECP256R1()).public_key())
    assert chain_verifies(leaf, [sub, root])
    assert issuer_chain(leaf, [root, sub]) == [sub]  # nearest first, never the root
    assert issuer_chain(sub, [root, sub]) == []
    assert not chain_verifies(leaf, [root])  # the intermediate is missing
    with pytest.raises(LookupError, match="Sub CA"):
        issuer_chain(leaf, [root])


def test_chain_refuses_a_forged_or_non_ca_issuer() -> None:
    root, root_key = make_ca()
    other_root, _ = make_ca()  # same name, other key: the signature cannot verify
    leaf = issue(root, root_key, ec.generate_private_key(ec.SECP256R1()).public_key())
    assert chain_verifies(leaf, [root])
    assert not chain_verifies(leaf, [other_root])
    not_ca, not_ca_key = _intermediate(root, root_key, ca=False)
    below = issue(not_ca, not_ca_key, ec.generate_private_key(ec.SECP256R1()).public_key())
    assert not chain_verifies(below, [not_ca, root])


def test_chain_refuses_an_expired_certificate() -> None:
    root, root_key = make_ca()
    now = datetime.datetime.now(datetime.timezone.utc)
    expired = (
        x509.CertificateBuilder().subject_name(name("old")).issuer_name(root.subject)
        .public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=10)).not_valid_after(now - datetime.timedelta(days=1))
        .sign(root_key, hashes.SHA256())
    )
    assert not chain_verifies(expired, [root])


# -- policy -----------------------------------------------------------------


def test_policy_draft_holds_the_profile() -> None:
    root, root_key = make_ca()
    policy = IssuingPolicy(Profile(validity_days=10, extended_key_usages=(ExtendedKeyUsageOID.SERVER_AUTH,)), root)
    csr = _csr("pol", subject_alt_names=[x509.DNSName("pol.example")])
    draft = policy.draft(csr)
    cert = KeyFileSigner(root, root_key).sign_certificate(draft.builder.serial_number(1234))
    assert cert.subject == csr.subject
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH]
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_agreement  # EC key
    assert draft.sans == [x509.DNSName("pol.example")]
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days in (10, 9)
    assert chain_verifies(cert, [root])


def test_policy_refuses_small_rsa_and_empty_requests() -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    root, _ = make_ca()
    policy = IssuingPolicy(Profile(min_rsa_bits=3072), root)
    with pytest.raises(Refused, match="3072"):
        policy.draft(_csr("rsa", rsa.generate_private_key(65537, 2048)))
    empty = pkcs10.decode_csr(pkcs10.build_csr(ec.generate_private_key(ec.SECP256R1()), x509.Name([])))
    with pytest.raises(Refused, match="neither a subject nor a subjectAltName"):
        policy.draft(empty)


# -- signer -----------------------------------------------------------------


class _CountingSigner(Signer):
    """A signer of our own: the CA must sign only through it."""

    def __init__(self, inner: KeyFileSigner) -> None:
        self.inner = inner
        self.certificate = inner.certificate
        self.signed = 0

    @property
    def key(self) -> PrivateKey:
        return self.inner.key

    def sign_certificate(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        self.signed += 1
        return self.inner.sign_certificate(builder)

    def sign_crl(self, builder: x509.CertificateRevocationListBuilder) -> x509.CertificateRevocationList:
        self.signed += 1
        return self.inner.sign_crl(builder)


def test_the_ca_signs_through_its_signer(tmp_path: Path) -> None:
    EmbeddedCA.init(tmp_path / "ca", hostnames=("127.0.0.1",)).close()
    from estproto.ca import data_dir

    material = data_dir.load(tmp_path / "ca")
    signer = _CountingSigner(KeyFileSigner(*material.issuer))
    with EmbeddedCA.open(tmp_path / "ca", signer=signer) as ca:
        request = SimpleEnrollRequest(label="", credentials=None, facts=ConnectionFacts(is_tls=True),
                                      csr=_csr("signed"))
        response = ca.enroll(request, Principal("user:x", "basic"))
        assert isinstance(response, CertificateResponse)
        assert signer.signed == 1
        assert ca.store.get_issued(format(response.certificate.serial_number, "x")) is not None
    other, other_key = make_ca("Other CA")
    with pytest.raises(CAError, match="issuing certificate"):
        EmbeddedCA.open(tmp_path / "ca", signer=KeyFileSigner(other, other_key))


# -- users, approvals, revocation --------------------------------------------


def test_user_directory_checks_and_forgets(tmp_path: Path) -> None:
    with EmbeddedCA.init(tmp_path / "ca", hostnames=("127.0.0.1",)) as ca:
        users = ca.users
        users.add("alice", "secret-1", "test")
        good = auth.BasicCredentials("alice", "secret-1")
        assert not users.basic_recently_verified(good)
        assert users.check_basic(good)
        assert users.basic_recently_verified(good)  # the loop may now trust the cache
        assert not users.check_basic(auth.BasicCredentials("alice", "wrong"))
        assert not users.check_basic(auth.BasicCredentials("nobody", "secret-1"))
        users.add("alice", "secret-2", "test")  # a new password empties the cache
        assert not users.basic_recently_verified(good)
        assert not users.check_basic(good)
        assert users.remove("alice", "test") and not users.remove("alice", "test")
        with pytest.raises(ValueError):
            users.add("a:b", "pw", "test")


def test_approvals_gate_then_issue(tmp_path: Path) -> None:
    with EmbeddedCA.init(tmp_path / "ca", hostnames=("127.0.0.1",),
                         settings=CASettings(manual_approval=True, retry_after=7)) as ca:
        csr = _csr("wait")
        who = Principal("user:w", "basic")
        first = ca.approvals.gate(csr, who, "", Operation.SIMPLEENROLL)
        assert isinstance(first, RetryLater) and first.retry_after == 7
        (pending,) = ca.list_pending()
        ca.approve(pending.id)
        assert ca.approvals.gate(csr, who, "", Operation.SIMPLEENROLL) == pending.id
        # Someone else with the same CSR does not collect it.
        assert isinstance(ca.approvals.gate(csr, Principal("user:other", "basic"), "",
                                            Operation.SIMPLEENROLL), RetryLater)


def test_revocation_counts_only_our_unrevoked_certificates(tmp_path: Path) -> None:
    with EmbeddedCA.init(tmp_path / "ca", hostnames=("127.0.0.1",)) as ca:
        request = SimpleEnrollRequest(label="", credentials=None, facts=ConnectionFacts(is_tls=True),
                                      csr=_csr("rev"))
        response = ca.enroll(request, Principal("user:x", "basic"))
        assert isinstance(response, CertificateResponse)
        cert = response.certificate
        assert ca.revocation.known_certificate(cert) is not None
        foreign_root, foreign_key = make_ca()
        foreign = issue(foreign_root, foreign_key, ec.generate_private_key(ec.SECP256R1()).public_key())
        assert ca.revocation.known_certificate(foreign) is None
        assert ca.revocation.why_unknown(foreign) == "was not issued by this CA"
        ca.revoke(f"0x{cert.serial_number:X}", "keyCompromise")
        assert ca.revocation.known_certificate(cert) is None
        assert ca.revocation.why_unknown(cert) == "is revoked (keyCompromise)"
        with pytest.raises(ValueError):
            ca.revoke(cert.serial_number, "no-such-reason")


def test_normalise_serial() -> None:
    assert normalise_serial(255) == "ff"
    assert normalise_serial("00:FF") == normalise_serial("0xff") == "ff"
    with pytest.raises(ValueError, match="hexadecimal"):
        normalise_serial("zz")


def test_read_config(tmp_path: Path) -> None:
    from estproto.ca import data_dir

    assert data_dir.read_config(tmp_path / "none") is None
    EmbeddedCA.init(tmp_path / "ca", hostnames=("127.0.0.1", "est.example")).close()
    config = data_dir.read_config(tmp_path / "ca")
    assert config is not None and config["hostnames"] == ["127.0.0.1", "est.example"]
    (tmp_path / "ca" / "config.json").write_text("{not json")
    with pytest.raises(CAError, match="unreadable"):
        data_dir.read_config(tmp_path / "ca")
    with pytest.raises(CAError):
        EmbeddedCA.open(tmp_path / "ca")
