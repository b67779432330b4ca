"""Behaviour kept by the server-CPU optimisations of the CA and its store.

* The store's group committer has no writer thread: a waiting caller commits
  the batch itself and hands the role on (estproto.ca.store). Checked here:
  concurrent writers with failing jobs mixed in (duplicate serials, which a
  batch of one rolls back without a SAVEPOINT), the ``commit_window`` path,
  and ``close()`` while writers are running (every write that returned is
  durable, later ones fail with StoreError, nobody hangs).
* The embedded CA builds the issued record from what it signed instead of
  parsing the new certificate back (IssuedRecord.for_certificate): the record must
  equal the one parsed from the certificate.
* The asyncio adapter's pause before a commit flush lets a connection whose
  bytes arrive in the same loop iteration sign its request first, so that
  the flush covers its record too.

No timing assertions: only results.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import ipaddress
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from pki import make_key

from estproto._paths import Operation
from estproto.asyncio import _one_turn
from estproto.ca import EmbeddedCA
from estproto.ca.backend import Principal
from estproto.ca.sqlite_store import SQLiteStore
from estproto.ca.store import DuplicateSerialError, IssuedRecord, StoreError
from estproto.codecs import pkcs10

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
WRITERS = 8
WRITES = 40


def record(serial: str) -> IssuedRecord:
    return IssuedRecord(
        serial=serial, der=b"der", subject="CN=x", san="", requester="user:a",
        request_der=None, label="", operation="simpleenroll", issued_at=NOW, not_after=NOW,
    )


@pytest.mark.parametrize("commit_window", [0.0, 0.002])
@pytest.mark.parametrize("group_commit", [True, False])
def test_concurrent_writes_with_failures(
    tmp_path: Path, commit_window: float, group_commit: bool
) -> None:
    duplicates: list[str] = []
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(WRITES):
                serial = f"{t:02x}{i:04x}"
                store.record_issued(record(serial))
                if i % 8 == 0:
                    try:
                        store.record_issued(record(serial))
                    except DuplicateSerialError:
                        duplicates.append(serial)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with SQLiteStore(tmp_path / "s.db", commit_window=commit_window, group_commit=group_commit,
                     max_batch=4) as store:
        threads = [threading.Thread(target=work, args=(t,)) for t in range(WRITERS)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(30)
        assert not errors and not any(th.is_alive() for th in threads)
        assert len(duplicates) == WRITERS * (WRITES // 8)
        assert store.count_issued() == store.jobs == WRITERS * WRITES
        if not group_commit:
            assert store.commits == WRITERS * WRITES


def test_close_while_writing(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SQLiteStore(path)
    written: list[str] = []
    refused: list[StoreError] = []
    started = threading.Barrier(WRITERS + 1)

    def work(t: int) -> None:
        started.wait()
        for i in range(10_000):
            serial = f"{t:02x}{i:04x}"
            try:
                store.record_issued(record(serial))
            except StoreError as exc:
                refused.append(exc)
                return
            written.append(serial)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(WRITERS)]
    for th in threads:
        th.start()
    started.wait()
    while len(written) < 20:
        threading.Event().wait(0.001)
    store.close()
    for th in threads:
        th.join(30)
    assert not any(th.is_alive() for th in threads)
    assert len(refused) == WRITERS and all("closed" in str(e) for e in refused)
    with SQLiteStore(path) as again:
        assert again.count_issued() == len(written)
        assert all(again.get_issued(s) is not None for s in written)


def _csr(name: x509.Name, sans: list[x509.GeneralName], kind: str) -> pkcs10.CertificationRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(name)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    der = builder.sign(make_key(kind), hashes.SHA256()).public_bytes(  # type: ignore[arg-type]
        serialization.Encoding.DER)
    return pkcs10.decode_csr(der)


def test_issued_record_matches_the_certificate(tmp_path: Path) -> None:
    cases = [
        _csr(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'dev, "x"+y'),
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "O")]), [], "p256"),
        _csr(x509.Name([]), [x509.DNSName("a.example"),
                             x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
                             x509.RFC822Name("a@example.com"),
                             x509.UniformResourceIdentifier("urn:x")], "p256"),
        _csr(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rsa")]),
             [x509.DNSName("r.example")], "rsa2048"),
    ]
    with EmbeddedCA.init(tmp_path / "ca", hostnames=("127.0.0.1",)) as ca:
        for csr in cases:
            cert = ca._issue(csr, Principal("user:a", "basic"), "", Operation.SIMPLEENROLL)
            stored = ca.store.get_issued(format(cert.serial_number, "x"))
            parsed = IssuedRecord.for_certificate(cert, requester="user:a", request_der=csr.der,
                                                  label="", operation="simpleenroll")
            assert stored is not None
            assert dataclasses.replace(stored, issued_at=parsed.issued_at) == parsed


def test_asyncio_flush_pause_lets_a_request_read_after_ours_join() -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        readable = loop.create_future()
        order: list[str] = []

        async def other_connection() -> None:
            await readable  # its receive(), woken by data_received
            order.append("other signed")

        task = asyncio.create_task(other_connection())
        await asyncio.sleep(0)  # it is waiting for bytes
        # Its data_received runs after us in this loop iteration, as a
        # transport's read callback queued behind our task does.
        loop.call_soon(readable.set_result, None)
        await _one_turn()
        order.append("flush")
        await task
        return order

    assert asyncio.run(main()) == ["other signed", "flush"]
