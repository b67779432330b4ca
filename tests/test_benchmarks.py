"""The benchmark scripts in benchmarks/ still run and keep their output format.

Each script runs with ``--quick`` in a subprocess (as a user would run it);
the test checks the exit status and the machine-readable last line. No
timing is asserted: the figures depend on the machine and its load.
"""

from __future__ import annotations

import base64
import importlib
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

_NUM = r"[0-9]+\.[0-9]{2}"
_NUM1 = r"[0-9]+\.[0-9]"

CASES = [
    (
        "codecs.py",
        re.compile(
            rf"codec_ratio csr_decode={_NUM} pkcs7_encode={_NUM} pkcs7_decode={_NUM} "
            rf"pkcs8_encode={_NUM} pkcs8_decode={_NUM} csr_build={_NUM}"
        ),
    ),
    (
        "bench_core.py",
        re.compile(rf"reference_ratio keepalive={_NUM} new_tls12={_NUM} new_tls13={_NUM}\n"
                   rf"floor_ratio keepalive={_NUM} new_tls12={_NUM} new_tls13={_NUM}"),
    ),
    (
        # estproto serve on both frameworks and the bare server, each in its
        # own process, and the load generator.
        "bench_loopback.py",
        re.compile(
            rf"enroll_per_s keepalive_asyncio={_NUM1} keepalive_trio={_NUM1} "
            rf"newconn_asyncio={_NUM1} newconn_trio={_NUM1} "
            rf"server_cpu_us={_NUM1} peak_rss_mb={_NUM1}\n"
            rf"loopback_ratio keepalive={_NUM} newconn={_NUM}"
        ),
    ),
]


@pytest.mark.parametrize("script,last_line", CASES, ids=[c[0] for c in CASES])
def test_benchmark_quick_run(script: str, last_line: re.Pattern[str]) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines, "no output"
    tail = "\n".join(lines[-(last_line.pattern.count("\\n") + 1):])
    assert last_line.fullmatch(tail), tail


def test_loopback_durable_reference() -> None:
    """``--durable`` adds the bare server with a durable commit per
    enrollment, its rows and the ``durable_reference`` line, and the last
    lines keep their format."""
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_loopback.py"), "--quick", "--durable"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    durable_rows = [line for line in lines if "bare server, durable" in line]
    assert [row.split()[0] for row in durable_rows] == ["keepalive", "newconn"], lines
    assert any(re.fullmatch(rf"durable_reference keepalive={_NUM} newconn={_NUM}", line)
               for line in lines), lines
    assert re.fullmatch(rf"loopback_ratio keepalive={_NUM} newconn={_NUM}", lines[-1]), lines[-1]


def test_durable_bare_server_commits_each_certificate_it_answers(tmp_path: Path) -> None:
    """The durable reference really stores: after N+1 enrollments its file
    holds N+1 rows, each a certificate whose serial is the row's, and the
    certificate a client received is one of them, byte for byte."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        bench = importlib.import_module("bench_loopback")
    finally:
        sys.path.remove(str(BENCHMARKS))
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs7

    from estproto.ca import EmbeddedCA

    data_dir = tmp_path / "ca"
    with EmbeddedCA.init(data_dir, hostnames=("127.0.0.1",)) as ca:
        ca.add_user(bench.USER, bench.PASSWORD)
    db = tmp_path / "bare.db"
    kind = next(k for k in bench.server_kinds(data_dir, False, durable=db) if k.name == "bare_durable")
    n = 6
    bodies = bench._make_bodies(n + 1)
    with open(tmp_path / "server.log", "wb") as log:
        server = bench.ServerProcess(kind, log)
        try:
            generator = bench.LoadGenerator(server.port, data_dir / "ca.pem", bodies[:n], 2)
            generator.run(n, True)
            # One more by hand, to compare what a client received with what is stored.
            conn = generator._connect()
            conn.request("POST", bench.PATH, body=bodies[n], headers=generator.headers)
            response = conn.getresponse()
            answer = response.read()
            conn.close()
        finally:
            server.stop()
    assert response.status == 200, answer[:200]
    (received,) = pkcs7.load_der_pkcs7_certificates(base64.b64decode(answer))
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT serial, der, requester FROM issued").fetchall()
    assert len(rows) == n + 1
    assert (format(received.serial_number, "x"),
            received.public_bytes(serialization.Encoding.DER)) in [(r[0], r[1]) for r in rows]
    for serial, der, requester in rows:
        assert format(x509.load_der_x509_certificate(der).serial_number, "x") == serial
        assert requester == f"user:{bench.USER}"
