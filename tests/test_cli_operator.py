"""The command line as an operator uses it: bad flags refused by name,
readable messages, no tracebacks (issue 14, items 2, 7, 8, 9, 10).

Every test runs the real ``estproto`` command in a subprocess and checks its
exit status (1: usage, ``estproto --help``) and what it printed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

import estproto

ESTPROTO = [sys.executable, "-m", "estproto"]
TIMEOUT = 60


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ESTPROTO, *args], capture_output=True, text=True, timeout=TIMEOUT,
                          stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("operator") / "DIR"
    assert cli("ca", "init", "--data-dir", str(d), "--hostname", "127.0.0.1").returncode == 0
    return d


def test_version() -> None:
    result = cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"estproto {estproto.__version__}"


URL = "https://127.0.0.1:1/.well-known/est"


@pytest.mark.parametrize(("args", "flag"), [
    (["serve", "--port", "70000"], "--port"),
    (["serve", "--port", "-1"], "--port"),
    (["serve", "--workers", "0"], "--workers"),
    (["serve", "--retry-after", "-5"], "--retry-after"),
    (["serve", "--retry-after", "1.5"], "--retry-after"),
    (["enroll", URL, "--timeout", "0"], "--timeout"),
    (["enroll", URL, "--timeout", "nan"], "--timeout"),
    (["enroll", URL, "--max-retries", "-1"], "--max-retries"),
    (["enroll", URL, "--max-retry-wait", "inf"], "--max-retry-wait"),
    (["ca", "approve", "0"], "ID"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_numeric_flags_are_range_checked(data_dir: Path, args: list[str], flag: str) -> None:
    if args[0] in ("serve", "ca"):
        args = [*args[:2], "--data-dir", str(data_dir), *args[2:]] if args[0] == "ca" else \
            [args[0], "--data-dir", str(data_dir), *args[1:]]
    result = cli(*args)
    assert result.returncode == 1, result
    assert f"argument {flag}" in result.stderr and "Traceback" not in result.stderr


def test_subject_without_an_attribute_says_how_to_write_one(tmp_path: Path) -> None:
    result = cli("enroll", URL, "--insecure", "--subject", "device-1", "--key-out", str(tmp_path / "k"))
    assert result.returncode == 1
    assert "--subject 'device-1'" in result.stderr and "CN=device-1" in result.stderr
    assert not (tmp_path / "k").exists()


@pytest.mark.parametrize(("subject", "rfc4514"), [
    ("CN=gw,O=Example", "CN=gw,O=Example"),
    ("/O=Example/CN=gw", "CN=gw,O=Example"),             # OpenSSL's form, most significant first
    ("/C=DE/O=A\\/B/CN=gw", "CN=gw,O=A/B,C=DE"),          # an escaped slash stays in the value
    ("/O=Example, Inc./CN=gw", "CN=gw,O=Example\\, Inc."),  # a comma is just a character there
])
def test_subject_in_either_notation(data_dir: Path, tmp_path: Path, subject: str, rfc4514: str) -> None:
    out = tmp_path / "gw.pem"
    result = cli("ca", "issue", "--data-dir", str(data_dir), "--subject", subject,
                 "--key-out", str(tmp_path / "gw.key"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert x509.load_pem_x509_certificate(out.read_bytes()).subject.rfc4514_string() == rfc4514


@pytest.mark.parametrize("flags", [["--subject", "CN=x"], ["--pop"], ["--key-type", "p384"]],
                         ids=lambda f: f[0])
def test_flags_a_ready_made_csr_would_ignore_are_refused(tmp_path: Path, flags: list[str]) -> None:
    csr = tmp_path / "x.csr"
    csr.write_bytes(b"not read: the flags are checked first")
    result = cli("enroll", URL, "--insecure", "--csr", str(csr), *flags)
    assert result.returncode == 1
    assert f"drop {flags[0]}" in result.stderr


def test_a_closed_pipe_ends_quietly(data_dir: Path) -> None:
    # `estproto ca list | head -0`: the reader is gone before the first line.
    proc = subprocess.Popen([*ESTPROTO, "ca", "list", "--data-dir", str(data_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(TIMEOUT) in (0, 1)
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_a_data_dir_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    result = cli("ca", "list", "--data-dir", str(not_a_dir / "sub"))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("estproto: ") and result.stderr.count("\n") == 1


def test_the_blocking_client_is_estproto_esclient() -> None:
    import estproto.sync

    assert estproto.ESTClient is estproto.sync.ESTClient


# ---------------------------------------------------------------------------
# Nothing lost: outputs checked before sending, keys never overwritten, and
# the same command after a 202 picks up the approval (items 3 and 4).


def test_an_unwritable_out_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    # Port 1 has no server: a network error would mean the check came late.
    key = tmp_path / "device.key"
    result = cli("enroll", URL, "--insecure", "--subject", "CN=x", "--key-out", str(key),
                 "--out", str(tmp_path / "nodir" / "x.pem"))
    assert result.returncode == 1
    assert "--out" in result.stderr and "no directory" in result.stderr
    assert not key.exists()  # no orphan key
    result = cli("enroll", URL, "--insecure", "--subject", "CN=x", "--key-out", str(tmp_path),
                 "--out", str(tmp_path / "x.pem"))
    assert result.returncode == 1 and "is a directory" in result.stderr


def test_pending_then_the_same_command_gets_the_certificate(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from test_cli import PASSWORD, run, serving

    data = tmp_path / "DIR"
    with serving(data, "--manual-approval", "--retry-after", "1") as server:
        assert run("ca", "add-user", "--data-dir", str(data), "bob", password=PASSWORD).returncode == 0
        key, out = tmp_path / "device.key", tmp_path / "device.pem"
        command = ["enroll", server.url, "--cacert", str(data / "ca.pem"), "--user", "bob",
                   "--subject", "CN=device-9", "--key-out", str(key), "--out", str(out),
                   "--max-retries", "0"]
        first = run(*command, password=PASSWORD)
        assert first.returncode == 4, first.stderr  # pending
        key_bytes = key.read_bytes()
        listed = run("ca", "list", "--data-dir", str(data), "--pending").stdout
        [request_id] = [line.split("\t")[0] for line in listed.splitlines() if "CN=device-9" in line]
        assert run("ca", "approve", "--data-dir", str(data), request_id).returncode == 0
        again = run(*command, password=PASSWORD)
        assert again.returncode == 0, again.stderr
        assert key.read_bytes() == key_bytes  # the same key, not overwritten
        cert = x509.load_pem_x509_certificate(out.read_bytes())
        private = serialization.load_pem_private_key(key_bytes, None)
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        assert cert.public_key().public_bytes(serialization.Encoding.DER, spki) == \
            private.public_key().public_bytes(serialization.Encoding.DER, spki)
        # A new key over an existing file needs --force.
        replace = [*command[:-2], "--key-type", "p256"]
        refused = run(*replace, password=PASSWORD)
        assert refused.returncode == 1 and "--force" in refused.stderr
        assert key.read_bytes() == key_bytes
        keygen = run("serverkeygen", server.url, "--cacert", str(data / "ca.pem"), "--user", "bob",
                     "--subject", "CN=device-9", "--key-out", str(key), password=PASSWORD)
        assert keygen.returncode == 1 and "--force" in keygen.stderr
        assert key.read_bytes() == key_bytes
        assert server.stop() == 0


def test_a_second_serve_workers_on_a_held_port_is_refused(tmp_path: Path) -> None:
    # SO_REUSEPORT would let it join the first one's port: clients would get
    # either CA at random (item 1).
    from test_cli import free_port, run, serving

    port = free_port()
    first_dir, second_dir = tmp_path / "one", tmp_path / "two"
    with serving(first_dir, "--workers", "2", port=port) as server:
        second = run("serve", "--data-dir", str(second_dir), "--host", "127.0.0.1",
                     "--port", str(port), "--workers", "2")
        assert second.returncode == 6, second.stderr  # network: the port is taken
        assert f"port {port} is already served" in second.stderr
        single = run("serve", "--data-dir", str(second_dir), "--host", "127.0.0.1", "--port", str(port))
        assert single.returncode == 6, single.stderr
        fetched = tmp_path / "ca.pem"
        got = run("cacerts", server.url, "--cacert", str(first_dir / "ca.pem"), "--out", str(fetched))
        assert got.returncode == 0, got.stderr
        assert x509.load_pem_x509_certificates(fetched.read_bytes())[0] == \
            x509.load_pem_x509_certificates((first_dir / "ca.pem").read_bytes())[0]
        assert server.stop() == 0
    # Released when the first one stops.
    with serving(second_dir, "--workers", "2", port=port) as again:
        assert again.port == port


# ---------------------------------------------------------------------------
# Failed commands change nothing; a new CA is never made silently (item 5).


def test_serve_on_an_address_it_cannot_bind_changes_nothing(data_dir: Path, tmp_path: Path) -> None:
    config = (data_dir / "config.json").read_bytes()
    server_cert = (data_dir / "server.pem").read_bytes()
    # 192.0.2.1 (TEST-NET-1) is on no interface here.
    result = cli("serve", "--data-dir", str(data_dir), "--host", "192.0.2.1", "--port", "0")
    assert result.returncode == 6, result.stderr
    assert "cannot listen on 192.0.2.1" in result.stderr
    assert (data_dir / "config.json").read_bytes() == config
    assert (data_dir / "server.pem").read_bytes() == server_cert
    fresh = tmp_path / "typo"
    for workers in ("1", "2"):
        result = cli("serve", "--data-dir", str(fresh), "--host", "192.0.2.1", "--port", "0",
                     "--workers", workers)
        assert result.returncode == 6, result.stderr
        assert not (fresh / "config.json").exists()


def test_ca_init_does_not_claim_a_key_type_it_did_not_apply(data_dir: Path) -> None:
    result = cli("ca", "init", "--data-dir", str(data_dir), "--key-type", "rsa")
    assert result.returncode == 2
    assert "--key-type (it has p256) applies to a new CA only" in result.stderr
    again = cli("ca", "init", "--data-dir", str(data_dir), "--key-type", "p256")
    assert again.returncode == 0 and "CA ready" in again.stdout and "(existing)" in again.stdout


def test_serve_says_when_it_creates_a_new_ca(tmp_path: Path) -> None:
    from test_cli import serving

    log = tmp_path / "serve.log"
    with serving(tmp_path / "new-dir", log=log) as server:
        assert server.stop() == 0
    assert "no CA in" in log.read_text() and "created a new one" in log.read_text()
    log2 = tmp_path / "serve2.log"
    with serving(tmp_path / "new-dir", log=log2) as server:
        assert server.stop() == 0
    assert "created a new one" not in log2.read_text()


# ---------------------------------------------------------------------------
# Users from files, listed and removed (item 9).


def test_users_password_files_listing_and_removal(tmp_path: Path) -> None:
    from test_cli import serving

    data = tmp_path / "DIR"
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert cli("ca", "init", "--data-dir", str(data)).returncode == 0
    added = cli("ca", "add-user", "--data-dir", str(data), "carol", "--password-file", str(secret))
    assert added.returncode == 0, added.stderr
    bad = cli("ca", "add-user", "--data-dir", str(data), "dave", "--password-file", str(empty))
    assert bad.returncode == 1 and "no password" in bad.stderr
    assert cli("ca", "list-users", "--data-dir", str(data)).stdout.split() == ["carol"]
    with serving(data) as server:
        enroll = ["enroll", server.url, "--cacert", str(data / "ca.pem"), "--user", "carol",
                  "--password-file", str(secret), "--subject", "CN=carol-dev"]
        first = cli(*enroll, "--key-out", str(tmp_path / "1.key"), "--out", str(tmp_path / "1.pem"))
        assert first.returncode == 0, first.stderr
        removed = cli("ca", "remove-user", "--data-dir", str(data), "carol")
        assert removed.returncode == 0, removed.stderr
        refused = cli(*enroll, "--key-out", str(tmp_path / "2.key"), "--out", str(tmp_path / "2.pem"))
        assert refused.returncode == 5, refused.stderr  # authentication failed
        assert server.stop() == 0
    assert cli("ca", "list-users", "--data-dir", str(data)).stdout == ""
    unknown = cli("ca", "remove-user", "--data-dir", str(data), "carol")
    assert unknown.returncode == 2 and "no user" in unknown.stderr


# ---------------------------------------------------------------------------
# Refusals name their cause; the server log says who got what (item 7).


def test_reenroll_refusals_say_why_and_the_log_says_who(tmp_path: Path) -> None:
    import datetime

    from cryptography.hazmat.primitives import hashes, serialization
    from test_cli import PASSWORD, run, serving

    data = tmp_path / "DIR"
    log = tmp_path / "serve.log"
    with serving(data, log=log) as server:
        assert run("ca", "add-user", "--data-dir", str(data), "erin", password=PASSWORD).returncode == 0
        trust = ["--cacert", str(data / "ca.pem")]
        key, cert = tmp_path / "d.key", tmp_path / "d.pem"
        got = run("enroll", server.url, *trust, "--user", "erin", "--subject", "CN=erin-dev",
                  "--key-out", str(key), "--out", str(cert), password=PASSWORD)
        assert got.returncode == 0, got.stderr
        serial = format(x509.load_pem_x509_certificate(cert.read_bytes()).serial_number, "x")

        # Expired: signed by the CA itself, so only the dates are wrong.
        root_key = serialization.load_pem_private_key((data / "root.key").read_bytes(), None)
        root = x509.load_pem_x509_certificate((data / "root.pem").read_bytes())
        device_key = serialization.load_pem_private_key(key.read_bytes(), None)
        now = datetime.datetime.now(datetime.timezone.utc)
        expired = (x509.CertificateBuilder().subject_name(
            x509.Name.from_rfc4514_string("CN=erin-dev")).issuer_name(root.subject)
            .public_key(device_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=10))
            .not_valid_after(now - datetime.timedelta(days=1))
            .sign(root_key, hashes.SHA256()))  # type: ignore[arg-type]
        old = tmp_path / "expired.pem"
        old.write_bytes(expired.public_bytes(serialization.Encoding.PEM))
        result = run("reenroll", server.url, *trust, "--cert", str(old), "--key", str(key),
                     "--out", str(tmp_path / "r.pem"))
        assert result.returncode == 2, result.stderr
        assert "did not verify" in result.stderr and "expired" in result.stderr

        assert run("ca", "revoke", "--data-dir", str(data), serial).returncode == 0
        result = run("reenroll", server.url, *trust, "--cert", str(cert), "--key", str(key),
                     "--out", str(tmp_path / "r.pem"))
        assert result.returncode == 2, result.stderr
        assert "is revoked" in result.stderr
        assert server.stop() == 0
    text = log.read_text()
    assert f"issued serial {serial} to user:erin (simpleenroll, subject CN=erin-dev)" in text
    assert f"serial {serial}" in text and "is revoked" in text
