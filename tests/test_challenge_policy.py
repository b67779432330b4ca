"""Which HTTP authentication a 401 offers, in what order, and when.

RFC 7235 4.1 leaves the order of challenges to the server, and real clients
read it differently: Bouncy Castle answers only the first (and its plain
``HttpAuth`` cannot do Digest), curl ``--anyauth`` and estproto's client pick
the strongest listed. So the embedded CA leads with Basic by default
(credentials are honoured over TLS only, RFC 7030 3.2.3) and an operator can
choose the schemes and their order (``CASettings.auth_schemes``,
``serve --auth-schemes``). Authentication is decided before the body is
judged: curl ``--digest`` probes with an empty POST and must get the 401.

The clients that motivate this run in tests/test_interop_bouncycastle.py and
tests/test_interop_curl.py; here are the core, the CA and the command line.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

import estproto
from estproto import AuthenticationRequired, ConnectionFacts, ESTServerProtocol, ESTServerSettings
from estproto.auth import BasicCredentials, DigestCredentials
from estproto.ca import CAError, CASettings, EmbeddedCA

TLS = ConnectionFacts(is_tls=True, tls_version="TLSv1.3")
ENROLL = "/.well-known/est/simpleenroll"
PKCS10 = [("content-type", "application/pkcs10")]
CHALLENGES = ('Basic realm="r"', 'Digest realm="r", nonce="n"')


def schemes(challenges: tuple[str, ...] | list[str]) -> list[str]:
    out = []
    for c in challenges:
        scheme, _, rest = c.partition(" ")
        algorithm = rest.split('algorithm="', 1)[1].split('"', 1)[0] if "algorithm=" in rest else ""
        out.append(f"{scheme.lower()}-{algorithm.lower().replace('-', '')}" if algorithm else scheme.lower())
    return out


# ---------------------------------------------------------------------------
# The core: 401 before the body is judged


def _post(settings: ESTServerSettings, body: bytes, headers: list[tuple[str, str]],
          facts: ConnectionFacts = TLS) -> object:
    return ESTServerProtocol(settings).receive_request("POST", ENROLL, headers, body, facts)


@pytest.mark.parametrize("body", [b"", b"!!! not base64 !!!"], ids=["empty", "garbage"])
def test_unauthenticated_post_with_a_bad_body_gets_the_challenge(body: bytes) -> None:
    settings = ESTServerSettings(challenges_before_body=lambda: CHALLENGES)
    event = _post(settings, body, PKCS10)
    assert isinstance(event, estproto.RequestRejected)
    assert event.status == 401
    assert event.reply.body == b""
    assert [v for k, v in event.reply.headers if k == "www-authenticate"] == list(CHALLENGES)


def test_wrong_media_type_unauthenticated_also_gets_the_challenge() -> None:
    settings = ESTServerSettings(challenges_before_body=lambda: CHALLENGES)
    event = _post(settings, b"", [("content-type", "text/plain")])
    assert isinstance(event, estproto.RequestRejected) and event.status == 401


def test_with_credentials_or_a_client_certificate_the_body_is_judged() -> None:
    settings = ESTServerSettings(challenges_before_body=lambda: CHALLENGES)
    basic = "Basic " + base64.b64encode(b"u:p").decode()
    event = _post(settings, b"", [*PKCS10, ("authorization", basic)])
    assert isinstance(event, estproto.RequestRejected) and event.status == 400
    certified = ConnectionFacts(is_tls=True, client_certificate_verified=True)
    event = _post(settings, b"", PKCS10, certified)
    assert isinstance(event, estproto.RequestRejected) and event.status == 400


def test_without_the_setting_or_with_no_challenge_the_400_stands() -> None:
    for settings in (ESTServerSettings(), ESTServerSettings(challenges_before_body=lambda: ())):
        event = _post(settings, b"", PKCS10)
        assert isinstance(event, estproto.RequestRejected) and event.status == 400


def test_unknown_paths_are_still_404_not_401() -> None:
    settings = ESTServerSettings(challenges_before_body=lambda: CHALLENGES)
    event = ESTServerProtocol(settings).receive_request("POST", "/.well-known/est/nope", PKCS10, b"", TLS)
    assert isinstance(event, estproto.RequestRejected) and event.status == 404


def test_each_request_gets_the_credentials_it_sent() -> None:
    # One connection's EST layer remembers the last Basic value it parsed:
    # a changed, malformed, non-Basic or missing Authorization on the next
    # request must still be read from that request.
    def basic(user: str, password: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    est = ESTServerProtocol(ESTServerSettings())
    sent = [basic("alice", "one"), basic("alice", "one"), basic("bob", "two"),
            'Digest username="carol", realm="r", nonce="n", uri="/.well-known/est/cacerts", '
            'response="0123456789abcdef0123456789abcdef"', None, basic("bob", "two"), "Basic !!!"]
    got = []
    for value in sent:
        headers = [] if value is None else [("authorization", value)]
        event = est.receive_request("GET", "/.well-known/est/cacerts", headers, b"", TLS)
        got.append(getattr(event, "credentials", event))
        if isinstance(event, estproto.ServerRequest):
            est.respond(estproto.ErrorResponse(404, "x"))
    assert got[:3] == [BasicCredentials("alice", "one")] * 2 + [BasicCredentials("bob", "two")]
    assert isinstance(got[3], DigestCredentials) and got[3].username == "carol"
    assert got[4] is None
    assert got[5] == BasicCredentials("bob", "two")
    assert isinstance(got[6], estproto.RequestRejected) and got[6].status == 400


# ---------------------------------------------------------------------------
# The embedded CA: order and choice of schemes


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    d = tmp_path / "ca"
    with EmbeddedCA.init(d, hostnames=("127.0.0.1",)) as ca:
        ca.add_user("alice", "secret")
    return d


def _challenges(ca_dir: Path, settings: CASettings) -> list[str]:
    with EmbeddedCA.open(ca_dir, settings=settings) as ca:
        return schemes(ca.challenges())


def test_default_order_leads_with_basic(ca_dir: Path) -> None:
    assert _challenges(ca_dir, CASettings()) == ["basic", "digest-sha256", "digest-md5"]


@pytest.mark.parametrize("order", [
    ("digest-sha256", "digest-md5"),
    ("digest-md5", "basic", "digest-sha256"),
    ("basic",),
])
def test_configured_order_is_the_order_on_the_wire(ca_dir: Path, order: tuple[str, ...]) -> None:
    assert _challenges(ca_dir, CASettings(auth_schemes=order)) == list(order)


def test_switched_off_methods_are_left_out(ca_dir: Path) -> None:
    assert _challenges(ca_dir, CASettings(accept_basic=False)) == ["digest-sha256", "digest-md5"]
    assert _challenges(ca_dir, CASettings(accept_digest=False)) == ["basic"]


@pytest.mark.parametrize("bad", [("basic", "basic"), ("ntlm",), ("digest-sha1",)])
def test_bad_scheme_lists_are_refused(bad: tuple[str, ...]) -> None:
    with pytest.raises(CAError, match="auth_schemes"):
        CASettings(auth_schemes=bad)


def test_digest_only_refuses_basic_credentials(ca_dir: Path) -> None:
    from test_ca import enroll, make_csr  # the CA tests' request builders
    from cryptography.hazmat.primitives.asymmetric import ec

    with EmbeddedCA.open(ca_dir, settings=CASettings(auth_schemes=("digest-sha256",))) as ca:
        csr = make_csr(ec.generate_private_key(ec.SECP256R1()))
        response = ca.handler()(enroll(csr, BasicCredentials("alice", "secret")))
    assert isinstance(response, AuthenticationRequired)
    assert schemes(response.challenges) == ["digest-sha256"]


# ---------------------------------------------------------------------------
# The command line


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "estproto", *args], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("bad", ["ntlm", "basic,basic", "", "basic,,digest-md5"])
def test_serve_refuses_a_bad_auth_schemes_list(ca_dir: Path, bad: str) -> None:
    result = _cli("serve", "--data-dir", str(ca_dir), "--port", "0", "--auth-schemes", bad)
    assert result.returncode == 1  # usage (estproto --help: exit codes)
    assert "--auth-schemes" in result.stderr and "basic, digest-sha256, digest-md5" in result.stderr


@pytest.fixture
def digest_only_server(ca_dir: Path) -> Iterator[str]:
    from test_cli import serving

    with serving(ca_dir, "--auth-schemes", "DIGEST-SHA256") as server:
        yield server.url


def test_serve_auth_schemes_reaches_the_wire(ca_dir: Path, digest_only_server: str) -> None:
    # An unauthenticated enrollment through estproto's own client: the 401
    # it reports carries exactly what --auth-schemes asked for.
    import estproto.sync
    from estproto.codecs import pkcs10
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    trust = x509.load_pem_x509_certificates((ca_dir / "ca.pem").read_bytes())
    port = int(digest_only_server.split(":")[2].split("/")[0])
    csr = pkcs10.build_csr(ec.generate_private_key(ec.SECP256R1()),
                           x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
    with estproto.sync.ESTClient("127.0.0.1", port, estproto.ClientTLSContext(trust_anchors=trust)) as client:
        result = client.request(estproto.SimpleEnroll(csr=csr))
    assert isinstance(result, estproto.AuthenticationChallenged)
    assert [getattr(c, "scheme", "").lower() for c in result.challenges] == ["digest"]
    assert [dict(c.params).get("algorithm") for c in result.challenges] == ["SHA-256"]  # type: ignore[attr-defined]
