"""Every example in examples/ is run here against real peers."""

from __future__ import annotations

import base64
import http.client
import shutil
import ssl
import subprocess
import threading
from pathlib import Path
from types import ModuleType
from typing import Iterator

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import require_tool
from estproto.codecs import pkcs7, pkcs10, transfer
from pki import name
from examples_helper import load_example




@pytest.fixture
def layer_server() -> Iterator[tuple[ModuleType, object, int]]:
    example = load_example("est_layer_in_http_server")
    ca = example.TinyCA()
    httpd = example.make_server(ca)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield example, httpd, httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
        shutil.rmtree(httpd.ca_pem.parent, ignore_errors=True)


def _https(port: int, cafile: Path) -> http.client.HTTPSConnection:
    context = ssl.create_default_context(cafile=str(cafile))
    return http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)


def test_est_layer_example_serves_cacerts_and_challenges(layer_server: tuple[ModuleType, object, int]) -> None:
    _, httpd, port = layer_server
    conn = _https(port, httpd.ca_pem)  # type: ignore[attr-defined]
    conn.request("GET", "/.well-known/est/cacerts")
    response = conn.getresponse()
    body = response.read()
    assert response.status == 200
    assert response.getheader("Content-Type") == "application/pkcs7-mime"
    certs = pkcs7.decode_certs_only(transfer.decode_base64(body))
    assert certs[0].subject.rfc4514_string() == "CN=example root"

    csr = pkcs10.build_csr(ec.generate_private_key(ec.SECP256R1()), name("no-creds"))
    conn.request("POST", "/.well-known/est/simpleenroll", body=transfer.encode_base64(csr),
                 headers={"Content-Type": "application/pkcs10"})
    response = conn.getresponse()
    assert response.read() == b""
    assert response.status == 401
    assert response.getheader("WWW-Authenticate", "").startswith("Basic")
    conn.close()


def test_est_layer_example_enrolls_with_curl(layer_server: tuple[ModuleType, object, int], tmp_path: Path) -> None:
    curl = require_tool("curl")
    _, httpd, port = layer_server
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "device.b64").write_bytes(transfer.encode_base64(pkcs10.build_csr(key, name("curl-device"))))
    # The well-known curl command line; --data @file strips the newline.
    result = subprocess.run(
        [curl, "-sS", "--cacert", str(httpd.ca_pem), "--user", "demo:demo-password",  # type: ignore[attr-defined]
         "--data", "@device.b64", "-o", "device-p7.b64",
         "-H", "Content-Type: application/pkcs10", "-H", "Content-Transfer-Encoding: base64",
         f"https://127.0.0.1:{port}/.well-known/est/simpleenroll"],
        cwd=tmp_path, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    certs = pkcs7.decode_certs_only(transfer.decode_base64((tmp_path / "device-p7.b64").read_bytes()))
    assert len(certs) == 1
    assert certs[0].subject.rfc4514_string() == "CN=curl-device"
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert certs[0].public_key().public_bytes(serialization.Encoding.DER, spki) == (
        key.public_key().public_bytes(serialization.Encoding.DER, spki)
    )


def test_est_layer_example_refuses_wrong_password(layer_server: tuple[ModuleType, object, int]) -> None:
    _, httpd, port = layer_server
    conn = _https(port, httpd.ca_pem)  # type: ignore[attr-defined]
    csr = pkcs10.build_csr(ec.generate_private_key(ec.SECP256R1()), name("x"))
    auth_value = "Basic " + base64.b64encode(b"demo:wrong").decode()
    conn.request("POST", "/.well-known/est/simpleenroll", body=transfer.encode_base64(csr),
                 headers={"Content-Type": "application/pkcs10", "Authorization": auth_value})
    response = conn.getresponse()
    response.read()
    assert response.status == 401
    conn.close()
