"""What an operator asks of the command line beyond enrolling (issue 14,
items 7 and 9): a config file for ``serve``, the lifetime of issued
certificates, encrypted key files, full-chain output, renew-if-due for
timers, a client that says what it does (``-v``).

Every test runs the real ``estproto`` command against a real ``estproto
serve`` (subprocesses, TLS over loopback) and checks exit codes, messages
and the files written.
"""

from __future__ import annotations

import datetime
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from test_cli import PASSWORD, run, serving

KEY_PASSPHRASE = "correct horse battery staple"


def _certs(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def _days_left(cert: x509.Certificate) -> float:
    left = cert.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)
    return left.total_seconds() / 86400


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A server on a CA with an intermediate, issuing 10-day certificates,
    its settings from a config file (the command line adds only where to
    listen), and a user."""
    root = tmp_path_factory.mktemp("options")
    data = root / "DIR"
    init = run("ca", "init", "--data-dir", str(data), "--hostname", "127.0.0.1", "--intermediate")
    assert init.returncode == 0, init.stderr
    assert run("ca", "add-user", "--data-dir", str(data), "olga", password=PASSWORD).returncode == 0
    config = root / "serve.ini"
    config.write_text("[serve]\n"
                      "validity-days = 10   # short-lived\n"
                      "retry-after = 7\n"
                      "pop = verify-if-present\n"
                      "manual-approval = false\n")
    with serving(data, "--config", str(config)) as server:
        yield root, data, server
    assert server.proc.returncode in (0, None)


def _enroll(root: Path, data: Path, url: str, name: str, *extra: str,
            password: str | None = PASSWORD) -> subprocess.CompletedProcess[str]:
    return run("enroll", url, "--cacert", str(data / "ca.pem"), "--user", "olga",
               "--subject", f"CN={name}", *extra, password=password)


def test_the_config_file_sets_the_lifetime_and_the_command_line_wins(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root, data, server = served
    out = tmp_path / "c.pem"
    got = _enroll(root, data, server.url, "cfg-1", "--key-out", str(tmp_path / "k.pem"), "--out", str(out))
    assert got.returncode == 0, got.stderr
    assert 9.9 < _days_left(_certs(out)[0]) <= 10.01  # validity-days = 10 from the file
    # The file said port nothing, the command line said 0: the server listens.
    assert server.url.startswith("https://127.0.0.1:")


def test_certificates_never_outlive_their_issuer(tmp_path: Path) -> None:
    data = tmp_path / "DIR"
    with serving(data, "--validity-days", "36500") as server:
        assert run("ca", "add-user", "--data-dir", str(data), "olga", password=PASSWORD).returncode == 0
        out = tmp_path / "c.pem"
        got = _enroll(tmp_path, data, server.url, "long", "--key-out", str(tmp_path / "k"), "--out", str(out))
        assert got.returncode == 0, got.stderr
        issuer = x509.load_pem_x509_certificate((data / "root.pem").read_bytes())
        assert _certs(out)[0].not_valid_after_utc == issuer.not_valid_after_utc
        assert server.stop() == 0
    bad = run("serve", "--data-dir", str(data), "--validity-days", "0")
    assert bad.returncode == 1 and "--validity-days" in bad.stderr


@pytest.mark.parametrize("text, message", [
    ("[serve]\nprot = 8443\n", "unknown setting 'prot'"),
    ("[serve]\nport = 70000\n", "port: '70000' is not a port number"),
    ("[serve]\nmanual-approval = maybe\n", "manual-approval = 'maybe': expected true or false"),
    ("[serve]\ntls-min = 1.1\n", "tls-min = '1.1': expected one of 1.2, 1.3"),
    ("[server]\nport = 1\n", "unknown section [server]"),
    ("port = 1\n", "not an INI file"),
])
def test_a_bad_config_file_is_named_and_changes_nothing(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "serve.ini"
    config.write_text(text)
    data = tmp_path / "DIR"
    result = run("serve", "--config", str(config), "--data-dir", str(data), "--port", "0")
    assert result.returncode == 1
    assert f"--config {config}" in result.stderr and message in result.stderr, result.stderr
    assert not data.exists()  # refused before any CA was made


def test_config_file_paths_and_lists(tmp_path: Path) -> None:
    from estproto.cli import build_parser
    from estproto.cli._serve import with_config_file

    build_parser()
    config = tmp_path / "etc" / "serve.ini"
    config.parent.mkdir()
    config.write_text("[serve]\ndata-dir = ca\nhostname = a.example, 192.0.2.1\nverbose = 2\n")
    argv = with_config_file(["--config", str(config)])
    assert argv[:2] == ["--data-dir", str(config.parent / "ca")]  # relative to the file
    assert argv.count("--hostname") == 2 and "-v" not in argv and argv.count("--verbose") == 2
    # A repeatable flag on the command line replaces the file's list.
    argv = with_config_file(["--config", str(config), "--hostname", "b.example"])
    assert argv.count("--hostname") == 1


def test_encrypted_key_files(served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    root, data, server = served
    secret = tmp_path / "passphrase"
    secret.write_text(KEY_PASSPHRASE + "\n")
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    got = _enroll(root, data, server.url, "enc-1", "--key-out", str(key), "--out", str(cert),
                  "--key-password-file", str(secret))
    assert got.returncode == 0, got.stderr
    assert key.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    private = serialization.load_pem_private_key(key.read_bytes(), KEY_PASSPHRASE.encode())
    # openssl opens it too.
    opened = subprocess.run(["openssl", "pkey", "-in", str(key), "-passin", f"file:{secret}", "-noout"],
                            capture_output=True, text=True, timeout=30)
    assert opened.returncode == 0, opened.stderr

    renew = ["reenroll", server.url, "--cacert", str(data / "ca.pem"), "--cert", str(cert),
             "--key", str(key), "--out", str(tmp_path / "r.pem")]
    missing = run(*renew)
    assert missing.returncode == 1 and "is encrypted" in missing.stderr
    wrong = tmp_path / "wrong"
    wrong.write_text("nope\n")
    bad = run(*renew, "--key-password-file", str(wrong))
    assert bad.returncode == 1 and "wrong passphrase" in bad.stderr
    monkeypatch.setenv("ESTPROTO_KEY_PASSWORD", KEY_PASSPHRASE)
    good = run(*renew)
    assert good.returncode == 0, good.stderr
    renewed = _certs(tmp_path / "r.pem")[0]
    assert renewed.public_key() == private.public_key()

    # OpenSSL's traditional encrypted PEM ("Proc-Type: 4,ENCRYPTED") as --key.
    legacy = tmp_path / "legacy.pem"
    legacy.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.BestAvailableEncryption(KEY_PASSPHRASE.encode())))
    assert b"ENCRYPTED" in legacy.read_bytes()
    got = _enroll(root, data, server.url, "enc-2", "--key", str(legacy), "--out", str(tmp_path / "l.pem"))
    assert got.returncode == 0, got.stderr


def test_chain_output_verifies_with_openssl(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root, data, server = served
    out = tmp_path / "full.pem"
    got = _enroll(root, data, server.url, "chain-1", "--key-out", str(tmp_path / "k"), "--out", str(out),
                  "--chain")
    assert got.returncode == 0, got.stderr
    leaf, intermediate = _certs(out)  # the root is the relying party's, not sent
    assert leaf.issuer == intermediate.subject and intermediate.issuer != intermediate.subject
    verified = subprocess.run(["openssl", "verify", "-CAfile", str(data / "root.pem"), "-untrusted", str(out),
                               str(out)], capture_output=True, text=True, timeout=30)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    keygen = run("serverkeygen", server.url, "--cacert", str(data / "ca.pem"), "--user", "olga",
                 "--subject", "CN=chain-2", "--key-out", str(tmp_path / "k2"), "--out",
                 str(tmp_path / "k2.pem"), "--chain", password=PASSWORD)
    assert keygen.returncode == 0, keygen.stderr
    assert len(_certs(tmp_path / "k2.pem")) == 2
    der = _enroll(root, data, server.url, "chain-3", "--key-out", str(tmp_path / "k3"), "--chain",
                  "--format", "der")
    assert der.returncode == 1 and "--format pem" in der.stderr
    assert not (tmp_path / "k3").exists()  # refused before a key was made


def test_renew_only_when_due_in_place(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root, data, server = served
    key, cert = tmp_path / "k.pem", tmp_path / "device.pem"
    got = _enroll(root, data, server.url, "timer-1", "--key-out", str(key), "--out", str(cert))
    assert got.returncode == 0, got.stderr
    first = cert.read_bytes()
    daily = ["reenroll", server.url, "--cacert", str(data / "ca.pem"), "--cert", str(cert), "--key", str(key),
             "--out", str(cert), "--if-expires-within"]
    not_due = run(*daily, "5")  # a 10-day certificate
    assert not_due.returncode == 0 and "not due" in not_due.stderr and "nothing sent" in not_due.stderr
    assert cert.read_bytes() == first
    due = run(*daily, "30")
    assert due.returncode == 0, due.stderr
    assert "renewing" in due.stderr
    renewed = _certs(cert)[0]
    assert renewed.serial_number != x509.load_pem_x509_certificate(first).serial_number
    assert renewed.subject == x509.load_pem_x509_certificate(first).subject
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".device.pem.")]  # no temporary left
    log = server.log.read_text()
    assert log.count("CN=timer-1") >= 2


def test_verbose_client_says_what_happens_but_not_the_password(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root, data, server = served
    got = _enroll(root, data, server.url, "verbose-1", "--key-out", str(tmp_path / "k"), "--out",
                  str(tmp_path / "c"), "-v")
    assert got.returncode == 0, got.stderr
    assert "connected to 127.0.0.1:" in got.stderr and "TLSv1.3" in got.stderr
    assert "(verified)" in got.stderr and "sending SimpleEnroll" in got.stderr
    assert "answer: CertificateIssued" in got.stderr
    assert PASSWORD not in got.stderr and "Authorization" not in got.stderr
    quiet = _enroll(root, data, server.url, "verbose-2", "--key-out", str(tmp_path / "k2"), "--out",
                    str(tmp_path / "c2"))
    assert quiet.returncode == 0 and "connected to" not in quiet.stderr


def test_a_renewal_refusal_cites_its_rfc_section_once(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root, data, server = served
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    assert _enroll(root, data, server.url, "rfc-1", "--key-out", str(key), "--out", str(cert)).returncode == 0
    other = run("reenroll", server.url, "--cacert", str(data / "ca.pem"), "--cert", str(cert), "--key", str(key),
                "--subject", "CN=someone-else", "--out", str(tmp_path / "r.pem"))
    assert other.returncode == 2, other.stderr
    assert "differs from" in other.stderr and other.stderr.count("4.2.2") == 1, other.stderr
