"""The ``estproto`` command line, as scripts use it: real processes over loopback.

Every server here is a real ``python -m estproto serve`` process; every
client command is a real process too, except where a test needs many
concurrent enrollments (then the library's trio client runs in threads). A
module-scoped server is set up exactly as issue 4's scripting contract says
and shared by the client-command tests; tests that need other settings
start their own. Every process started is stopped (SIGTERM, then SIGKILL)
with bounded waits.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from estproto import trio as est_trio
from estproto._tls import ClientTLSContext
from estproto.ca import EmbeddedCA
from estproto.cli import ExitCode, main
from estproto.chain import chain_verifies
from estproto.cli._client import Target, parse_url
from estproto.cli._common import CLIError
from estproto.client import Credentials
from estproto.codecs import pkcs10
from conftest import require_tool
from pki import make_ca, pem
from server_thread import FRAMEWORKS

ESTPROTO = [sys.executable, "-m", "estproto"]
PASSWORD = "secret"
#: Bound on any one CLI process; they take 1-3 s on a loaded 2-core machine.
TIMEOUT = 60


def run(*args: str, password: str | None = None, timeout: float = TIMEOUT,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("ESTPROTO_PASSWORD", None)
    if password is not None:
        env["ESTPROTO_PASSWORD"] = password
    return subprocess.run([*ESTPROTO, *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=cwd, stdin=subprocess.DEVNULL)


def run_all(*commands: tuple[list[str], str | None]) -> list[subprocess.CompletedProcess[str]]:
    """Run independent CLI commands concurrently (saves wall time)."""
    results: list[Any] = [None] * len(commands)

    def one(i: int, args: list[str], password: str | None) -> None:
        results[i] = run(*args, password=password)

    threads = [threading.Thread(target=one, args=(i, a, p)) for i, (a, p) in enumerate(commands)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT + 5)
    return results


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A running ``estproto serve`` process."""

    def __init__(self, proc: subprocess.Popen[bytes], line: str, log: Path) -> None:
        self.proc = proc
        self.line = line
        self.log = log
        match = re.fullmatch(r"listening on (https://127\.0\.0\.1:(\d+)/\.well-known/est)", line)
        assert match, line
        self.url = match.group(1)
        self.port = int(match.group(2))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise


@contextlib.contextmanager
def serving(data_dir: Path, *args: str, port: int = 0, log: Path | None = None) -> Iterator[Server]:
    log = log or data_dir.with_name(data_dir.name + f"-serve-{time.monotonic_ns()}.log")
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [*ESTPROTO, "serve", "--data-dir", str(data_dir), "--host", "127.0.0.1",
             "--port", str(port), *args],
            stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
        )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT)
        line = proc.stdout.readline().decode() if ready else ""
        assert line.endswith("\n"), f"no listening line; log:\n{log.read_text()}"
        server = Server(proc, line.rstrip("\n"), log)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def load_cert(path: Path) -> x509.Certificate:
    data = path.read_bytes()
    return x509.load_pem_x509_certificate(data) if b"BEGIN" in data else x509.load_der_x509_certificate(data)


def spki(key_or_cert: Any) -> bytes:
    key = key_or_cert.public_key()
    return bytes(key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


# ---------------------------------------------------------------------------
# The shared server, set up exactly as the scripting contract says


class Served:
    def __init__(self, root: Path, server: Server, inits: list[subprocess.CompletedProcess[str]],
                 ca_pem_after_first_init: bytes, add_user: subprocess.CompletedProcess[str]) -> None:
        self.root = root
        self.dir = root / "DIR"
        self.server = server
        self.url = server.url
        self.ca_pem = self.dir / "ca.pem"
        self.inits = inits
        self.ca_pem_after_first_init = ca_pem_after_first_init
        self.add_user = add_user

    def trust(self) -> list[str]:
        return ["--cacert", str(self.ca_pem)]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("cli")
    data = root / "DIR"
    first = run("ca", "init", "--data-dir", str(data), "--hostname", "127.0.0.1")
    ca_pem = (data / "ca.pem").read_bytes() if first.returncode == 0 else b""
    second = run("ca", "init", "--data-dir", str(data), "--hostname", "127.0.0.1")
    add_user = run("ca", "add-user", "--data-dir", str(data), "alice", password=PASSWORD)
    with serving(data, port=free_port(), log=root / "serve.log") as server:
        yield Served(root, server, [first, second], ca_pem, add_user)
        assert server.stop() == 0


def test_scripting_contract(served: Served) -> None:
    first, second = served.inits
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    # Idempotent: the second init keeps the CA.
    assert served.ca_pem.read_bytes() == served.ca_pem_after_first_init
    assert served.add_user.returncode == 0, served.add_user.stderr
    assert served.server.line == f"listening on https://127.0.0.1:{served.server.port}/.well-known/est"
    # DIR/ca.pem trusts the TLS endpoint, checked by an independent TLS stack.
    context = ssl.create_default_context(cafile=str(served.ca_pem))
    with socket.create_connection(("127.0.0.1", served.server.port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
    # ... and the issued chain (Basic/Digest user accepted by default).
    out = served.root / "contract.pem"
    result = run("enroll", served.url, *served.trust(), "--user", "alice", "--subject", "CN=contract",
                 "--key-out", str(served.root / "contract.key"), "--out", str(out), password=PASSWORD)
    assert result.returncode == 0, result.stderr
    assert chain_verifies(load_cert(out), x509.load_pem_x509_certificates(served.ca_pem.read_bytes()))


def test_curl_enrollment_exactly_as_written(served: Served, openssl: str) -> None:
    curl = require_tool("curl")
    work = served.root / "curl"
    work.mkdir()
    der = subprocess.run(
        [openssl, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", "device.key", "-subj", "/CN=dev", "-outform", "DER"],
        cwd=work, capture_output=True, timeout=TIMEOUT, check=True,
    ).stdout
    (work / "device.b64").write_bytes(base64.encodebytes(der))  # what `| base64` gives: wrapped
    (work / "CA.pem").write_bytes(served.ca_pem.read_bytes())
    host_port = f"127.0.0.1:{served.server.port}"
    command = (
        f'{curl} --cacert CA.pem --user alice:{PASSWORD} --data @device.b64 -o device-p7.b64 '
        f'-H "Content-Type: application/pkcs10" -H "Content-Transfer-Encoding: base64" '
        f'https://{host_port}/.well-known/est/simpleenroll'
    )
    done = subprocess.run(command, shell=True, cwd=work, capture_output=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    (work / "device-p7.der").write_bytes(base64.b64decode(b"".join((work / "device-p7.b64").read_bytes().split())))
    printed = subprocess.run(
        [openssl, "pkcs7", "-inform", "DER", "-in", "device-p7.der", "-print_certs", "-out", "device.pem"],
        cwd=work, capture_output=True, timeout=TIMEOUT,
    )
    assert printed.returncode == 0, printed.stderr
    cert = load_cert(work / "device.pem")
    assert cert.subject.rfc4514_string() == "CN=dev"
    verified = subprocess.run([openssl, "verify", "-CAfile", str(served.ca_pem), "device.pem"],
                              cwd=work, capture_output=True, text=True, timeout=TIMEOUT)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    # The same ready-made CSR (DER) through the CLI, trusting the server --insecure-ly.
    (work / "device.der").write_bytes(der)
    again = run("enroll", served.url, "--insecure", "--user", "alice", "--csr", str(work / "device.der"),
                "--out", str(work / "again.pem"), password=PASSWORD)
    assert again.returncode == 0 and "WARNING" in again.stderr, again.stderr
    assert spki(load_cert(work / "again.pem")) == spki(cert)


def test_cacerts_with_cacert_and_with_fingerprint(served: Served) -> None:
    fingerprint = run("ca", "fingerprint", "--data-dir", str(served.dir))
    assert fingerprint.returncode == 0
    fp = fingerprint.stdout.strip()
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", fp)
    wrong = fp[:-2] + ("00" if fp[-2:] != "00" else "11")
    explicit, boot, mismatch, der = run_all(
        (["cacerts", served.url, *served.trust()], None),
        (["cacerts", served.url, "--fingerprint", fp, "--out", str(served.root / "boot.pem")], None),
        (["cacerts", served.url, "--fingerprint", wrong], None),
        (["cacerts", served.url, "--insecure", "--format", "der", "--out", str(served.root / "ca.p7")], None),
    )
    trusted = x509.load_pem_x509_certificates(served.ca_pem.read_bytes())
    assert explicit.returncode == 0, explicit.stderr
    assert x509.load_pem_x509_certificates(explicit.stdout.encode()) == trusted
    assert boot.returncode == 0, boot.stderr
    assert x509.load_pem_x509_certificates((served.root / "boot.pem").read_bytes()) == trusted
    assert mismatch.returncode == ExitCode.TLS and "fingerprint" in mismatch.stderr
    assert der.returncode == 0 and "WARNING" in der.stderr
    from estproto.codecs import pkcs7

    assert list(pkcs7.decode_certs_only((served.root / "ca.p7").read_bytes())) == trusted


def test_enroll_pop_reenroll_and_revoke(served: Served) -> None:
    w = served.root / "enroll"
    w.mkdir()
    result = run("enroll", served.url, *served.trust(), "--user", "alice", "--subject", "CN=dev-1",
                 "--san", "DNS:dev-1.example,IP:10.0.0.1", "--key-type", "p384",
                 "--key-out", str(w / "dev.key"), "--out", str(w / "dev.pem"), password=PASSWORD)
    assert result.returncode == 0, result.stderr
    assert (w / "dev.key").stat().st_mode & 0o077 == 0
    cert, key = load_cert(w / "dev.pem"), serialization.load_pem_private_key((w / "dev.key").read_bytes(), None)
    assert spki(cert) == spki(key) and isinstance(key, ec.EllipticCurvePrivateKey)
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["dev-1.example"]
    with EmbeddedCA.open(served.dir) as ca:
        record = ca.store.get_issued(format(cert.serial_number, "x"))
        assert record is not None and record.requester == "user:alice" and record.request_der
        # PoP linking is on by default: the CSR carried the channel binding.
        assert pkcs10.decode_csr(record.request_der).challenge_password

    renewed = run("reenroll", served.url, *served.trust(), "--cert", str(w / "dev.pem"),
                  "--key", str(w / "dev.key"), "--format", "der", "--out", str(w / "renewed.der"))
    assert renewed.returncode == 0, renewed.stderr
    new = load_cert(w / "renewed.der")
    assert new.subject == cert.subject and spki(new) == spki(cert)
    assert new.serial_number != cert.serial_number

    revoked = run("ca", "revoke", "--data-dir", str(served.dir), format(new.serial_number, "x"),
                  "--reason", "keyCompromise")
    assert revoked.returncode == 0, revoked.stderr
    again = run("reenroll", served.url, *served.trust(), "--cert", str(w / "renewed.der"),
                "--key", str(w / "dev.key"), "--out", str(w / "again.pem"))
    assert again.returncode in (ExitCode.REFUSED, ExitCode.AUTHENTICATION), again.stderr
    assert not (w / "again.pem").exists()


def test_serverkeygen_csrattrs_fullcmc(served: Served) -> None:
    w = served.root / "more"
    w.mkdir()
    keygen, attrs, cmc = run_all(
        (["serverkeygen", served.url, *served.trust(), "--user", "alice", "--subject", "CN=skg",
          "--key-out", str(w / "skg.key"), "--out", str(w / "skg.pem")], PASSWORD),
        (["csrattrs", served.url, *served.trust()], None),
        (["fullcmc", served.url, *served.trust(), "--user", "alice", "--subject", "CN=cmc",
          "--key-out", str(w / "cmc.key"), "--out", str(w / "cmc.pem")], PASSWORD),
    )
    assert keygen.returncode == 0, keygen.stderr
    skg_key = serialization.load_pem_private_key((w / "skg.key").read_bytes(), None)
    skg = load_cert(w / "skg.pem")
    assert spki(skg_key) == spki(skg) and skg.subject.rfc4514_string() == "CN=skg"
    assert attrs.returncode == 0, attrs.stderr
    assert "id-ecPublicKey" in attrs.stdout and "secp256r1" in attrs.stdout
    assert cmc.returncode == 0, cmc.stderr
    cmc_cert = load_cert(w / "cmc.pem")
    assert spki(cmc_cert) == spki(serialization.load_pem_private_key((w / "cmc.key").read_bytes(), None))
    with EmbeddedCA.open(served.dir) as ca:
        ops = {r.serial: r.operation for r in ca.list_issued()}
    assert ops[format(skg.serial_number, "x")] == "serverkeygen"
    assert ops[format(cmc_cert.serial_number, "x")] == "fullcmc"
    with EmbeddedCA.open(served.dir) as ca:
        record = ca.store.get_issued(format(skg.serial_number, "x"))
    # serverkeygen links its CSR to the TLS channel too (so --pop require works).
    assert record is not None and pkcs10.decode_csr(record.request_der, verify=False).challenge_password


@pytest.mark.parametrize("key_type", ["rsa2048", "p256"])
def test_serverkeygen_encrypted_to_the_client_certificate(served: Served, key_type: str) -> None:
    w = served.root / f"skg-enc-{key_type}"
    w.mkdir()
    enrolled = run("enroll", served.url, *served.trust(), "--user", "alice", "--subject", "CN=enc",
                   "--key-type", key_type, "--key-out", str(w / "dev.key"), "--out", str(w / "dev.pem"),
                   password=PASSWORD)
    assert enrolled.returncode == 0, enrolled.stderr
    device = load_cert(w / "dev.pem")
    keygen = run("serverkeygen", served.url, *served.trust(), "--cert", str(w / "dev.pem"),
                 "--key", str(w / "dev.key"), "--encrypt-key", "--subject", "CN=enc",
                 "--key-out", str(w / "new.key"), "--out", str(w / "new.pem"))
    # The CLI refuses a key that arrived without the encryption it asked for,
    # so success means the key came encrypted to dev.pem's key and was opened.
    assert keygen.returncode == 0, keygen.stderr
    new = load_cert(w / "new.pem")
    assert spki(serialization.load_pem_private_key((w / "new.key").read_bytes(), None)) == spki(new)
    assert spki(new) != spki(device)
    with EmbeddedCA.open(served.dir) as ca:
        record = ca.store.get_issued(format(new.serial_number, "x"))
    assert record is not None and record.requester.startswith("cert:")
    csr = pkcs10.decode_csr(record.request_der, verify=False)
    ski = device.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert csr.asymmetric_decrypt_key_identifier == ski


def test_serverkeygen_encrypt_key_needs_a_client_certificate(served: Served, tmp_path: Path) -> None:
    result = run("serverkeygen", served.url, *served.trust(), "--user", "alice", "--encrypt-key",
                 "--subject", "CN=x", "--key-out", str(tmp_path / "x.key"), password=PASSWORD)
    assert result.returncode == ExitCode.USAGE and "--cert" in result.stderr


def test_exit_codes(served: Served, tmp_path: Path) -> None:
    other_root, _ = make_ca("not our CA")
    (tmp_path / "other.pem").write_bytes(pem(other_root))
    enroll = ["enroll", served.url, "--user", "alice", "--subject", "CN=x",
              "--key-out", str(tmp_path / "x.key"), "--out", str(tmp_path / "x.pem")]
    wrong_password, untrusted, no_trust, refused_port, bad_url = run_all(
        ([*enroll, *served.trust()], "not the password"),
        ([*enroll, "--cacert", str(tmp_path / "other.pem")], PASSWORD),
        (enroll, PASSWORD),
        (["cacerts", f"https://127.0.0.1:{free_port()}/.well-known/est", *served.trust()], None),
        (["cacerts", "http://127.0.0.1/est", *served.trust()], None),
    )
    assert wrong_password.returncode == ExitCode.AUTHENTICATION, wrong_password.stderr
    assert "password" not in wrong_password.stderr.lower().replace("$estproto_password", "")
    assert untrusted.returncode == ExitCode.TLS, untrusted.stderr
    assert no_trust.returncode == ExitCode.USAGE, no_trust.stderr
    assert refused_port.returncode == ExitCode.NETWORK, refused_port.stderr
    assert bad_url.returncode == ExitCode.USAGE, bad_url.stderr
    assert not (tmp_path / "x.pem").exists()
    # The server's log never holds the password.
    assert PASSWORD not in served.server.log.read_text()


def test_manual_approval_pending_approve_reject(tmp_path: Path) -> None:
    data = tmp_path / "DIR"
    with serving(data, "--manual-approval", "--retry-after", "1", "--framework", "trio") as server:
        assert run("ca", "add-user", "--data-dir", str(data), "bob", password=PASSWORD).returncode == 0
        trust = ["--cacert", str(data / "ca.pem")]

        def enroll(name: str, *key: str) -> list[str]:
            return ["enroll", server.url, *trust, "--user", "bob", "--subject", f"CN={name}",
                    *key, "--out", str(tmp_path / f"{name}.pem"), "--max-retries", "0"]

        first, second = run_all(
            (enroll("wait-1", "--key-out", str(tmp_path / "w1.key")), PASSWORD),
            (enroll("wait-2", "--key-out", str(tmp_path / "w2.key")), PASSWORD),
        )
        assert first.returncode == ExitCode.PENDING, first.stderr
        assert second.returncode == ExitCode.PENDING, second.stderr
        listed = run("ca", "list", "--data-dir", str(data), "--pending")
        ids = {m.group(2): int(m.group(1)) for m in re.finditer(r"^(\d+)\tpending\t.*CN=(wait-\d)", listed.stdout, re.M)}
        assert set(ids) == {"wait-1", "wait-2"}, listed.stdout
        approve, reject, unknown, uninitialised = run_all(
            (["ca", "approve", "--data-dir", str(data), str(ids["wait-1"])], None),
            (["ca", "reject", "--data-dir", str(data), str(ids["wait-2"]), "--note", "unknown"], None),
            (["ca", "approve", "--data-dir", str(data), "999"], None),
            (["ca", "list", "--data-dir", str(tmp_path / "nothing-here")], None),
        )
        assert approve.returncode == 0 and reject.returncode == 0, approve.stderr + reject.stderr
        assert unknown.returncode == ExitCode.REFUSED, unknown.stderr
        assert uninitialised.returncode == ExitCode.REFUSED and "ca init" in uninitialised.stderr
        got, refused = run_all(
            (enroll("wait-1", "--key", str(tmp_path / "w1.key")), PASSWORD),
            (enroll("wait-2", "--key", str(tmp_path / "w2.key")), PASSWORD),
        )
        assert got.returncode == 0, got.stderr
        assert spki(load_cert(tmp_path / "wait-1.pem")) == spki(
            serialization.load_pem_private_key((tmp_path / "w1.key").read_bytes(), None))
        assert refused.returncode == ExitCode.REFUSED and "403" in refused.stderr, refused.stderr
        assert server.stop() == 0


# ---------------------------------------------------------------------------
# Load: workers, and kill -9 durability


def enroll_loop(port: int, ca_pem: Path, user: str, stop: threading.Event, received: list[x509.Certificate],
                errors: list[BaseException], count: int | None = None, new_connections: bool = False) -> None:
    """Enroll fresh keys until *stop* (or *count* done), recording every certificate received."""
    tls = ClientTLSContext(trust_anchors=x509.load_pem_x509_certificates(ca_pem.read_bytes()))
    key = ec.generate_private_key(ec.SECP256R1())

    async def go() -> None:
        done = 0
        while not stop.is_set() and (count is None or done < count):
            async with est_trio.ESTClient("127.0.0.1", port, tls, request_timeout=20, connect_timeout=10,
                                          credentials=Credentials(user, PASSWORD, preemptive_basic=True)) as c:
                while not stop.is_set() and (count is None or done < count):
                    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"load-{done}")])
                    received.append(await c.simpleenroll_linked(key, name))
                    done += 1
                    if new_connections:
                        break

    try:
        trio.run(go)
    except BaseException as exc:  # noqa: BLE001 - recorded for the test to judge
        errors.append(exc)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_workers_share_the_port_and_stop_on_sigterm(tmp_path: Path, framework: str) -> None:
    data = tmp_path / "DIR"
    with serving(data, "--workers", "2", "--framework", framework) as server:
        assert run("ca", "add-user", "--data-dir", str(data), "carol", password=PASSWORD).returncode == 0
        stop = threading.Event()
        received: list[x509.Certificate] = []
        errors: list[BaseException] = []
        threads = [threading.Thread(target=enroll_loop, args=(server.port, data / "ca.pem", "carol", stop,
                                                              received, errors, 2, True)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        assert not errors, errors
        assert len(received) == 16 and len({c.serial_number for c in received}) == 16
        log = server.log.read_text()
        pids = set(re.findall(r"\[(\d+)\] INFO estproto\.server: POST \S+simpleenroll 200", log))
        assert len(pids) == 2, log  # both workers served (16 connections: odds of one worker 2**-15)
        assert server.stop() == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid), 0)
    assert "stopping 2 workers gracefully" in server.log.read_text()


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_kill_9_loses_no_issued_certificate(tmp_path: Path, framework: str) -> None:
    data = tmp_path / "DIR"
    assert run("ca", "init", "--data-dir", str(data), "--hostname", "127.0.0.1").returncode == 0
    assert run("ca", "add-user", "--data-dir", str(data), "dave", password=PASSWORD).returncode == 0
    stop = threading.Event()
    received: list[x509.Certificate] = []
    errors: list[BaseException] = []
    with serving(data, "--framework", framework) as server:
        threads = [threading.Thread(target=enroll_loop, args=(server.port, data / "ca.pem", "dave", stop,
                                                              received, errors, None, i % 2 == 1))
                   for i in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(received) < 20 and time.monotonic() < deadline and not errors:
            time.sleep(0.05)
        server.proc.send_signal(signal.SIGKILL)  # mid-load: requests are in flight
        server.proc.wait(10)
        stop.set()
        for t in threads:
            t.join(TIMEOUT)
    assert len(received) >= 20, errors
    serials = [format(c.serial_number, "x") for c in received]
    assert len(set(serials)) == len(serials)
    with serving(data) as restarted:
        listed = run("ca", "list", "--data-dir", str(data))
        assert restarted.stop() == 0
    assert listed.returncode == 0, listed.stderr
    stored = [line.split("\t")[0] for line in listed.stdout.splitlines()[1:]]
    assert len(stored) == len(set(stored)), "a serial was issued twice"
    missing = set(serials) - set(stored)
    assert not missing, f"{len(missing)} of {len(serials)} received certificates are not in the store"


# ---------------------------------------------------------------------------
# demo, help, URLs


def test_demo() -> None:
    result = subprocess.run([*ESTPROTO, "demo"], capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert "BEGIN CERTIFICATE" in result.stdout
    assert "the certificate holds the key we generated: True" in result.stdout
    assert "the certificate chains to ca.pem: True" in result.stdout
    assert re.search(r"listening on https://127\.0\.0\.1:\d+/\.well-known/est", result.stdout)


COMMANDS = [
    [], ["demo"], ["serve"], ["ca"], ["ca", "init"], ["ca", "add-user"], ["ca", "list"], ["ca", "approve"],
    ["ca", "reject"], ["ca", "revoke"], ["ca", "fingerprint"], ["cacerts"], ["enroll"], ["reenroll"],
    ["serverkeygen"], ["csrattrs"], ["fullcmc"],
]


def test_help_of_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    top = subprocess.run([*ESTPROTO, "--help"], capture_output=True, text=True, timeout=TIMEOUT)
    assert top.returncode == 0 and "exit codes" in top.stdout
    for command in COMMANDS:
        with pytest.raises(SystemExit) as exited:
            main([*command, "--help"])
        assert exited.value.code == 0, command
        text = capsys.readouterr().out
        assert "example" in text, command
    with pytest.raises(SystemExit) as exited:
        main(["enroll"])  # missing URL and trust: usage error
    assert exited.value.code == ExitCode.USAGE
    capsys.readouterr()


@pytest.mark.parametrize("url, target", [
    ("https://127.0.0.1:8443/.well-known/est", Target("127.0.0.1", 8443, "")),
    ("https://est.example/.well-known/est/", Target("est.example", 443, "")),
    ("https://[::1]:9443/.well-known/est/tenant-a", Target("::1", 9443, "tenant-a")),
])
def test_parse_url(url: str, target: Target) -> None:
    assert parse_url(url) == target


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/.well-known/est", "https://127.0.0.1/est", "https://h/.well-known/estx",
    "https://u:p@h/.well-known/est", "https://h/.well-known/est?x=1", "https://h:99999/.well-known/est",
])
def test_parse_url_rejects(url: str) -> None:
    with pytest.raises(CLIError) as failed:
        parse_url(url)
    assert failed.value.code == ExitCode.USAGE
