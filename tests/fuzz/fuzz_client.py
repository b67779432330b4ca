"""Fuzz the client connection with arbitrary server responses.

The invariant of :class:`estproto.client.ClientConnection` (h11's): whatever
the server sends, ``receive_data`` and ``data_to_send`` return normally and
``next_event`` returns an event or raises :class:`~estproto.RemoteProtocolError`
(``DecodeError`` for bodies, ``TLSError`` for TLS), nothing else, and the
connection ends in finitely many events.

Input layout: byte 0 picks the request (low 3 bits: cacerts, csrattrs,
simpleenroll, simplereenroll, serverkeygen, KEK-encrypted serverkeygen,
fullcmc, labelled simpleenroll; with bit 4 set, serverkeygen opened with
the fixed P-256 key-agreement key (kari) or with the RSA key (ktri), the
rest wrapping round) and the transport (bit 3: TLS 1.3 after a real
handshake with a real server TLS layer, else plain HTTP with
``ClientConfig(tls=None)``); byte 1 how the
response is cut into reads (0 = one read); the rest is the server's response
byte stream (HTTP, as plaintext inside TLS). The client holds Basic
credentials, so 401 challenges are answered on the same connection.
"""

from __future__ import annotations

from typing import Mapping

import _harness
import _seeds

#: Most events one input may produce before the connection must be over.
MAX_EVENTS = 1000


def make_targets() -> Mapping[str, _harness.Target]:
    import conn_helpers as ch
    from estproto import RemoteProtocolError
    from estproto._events import (
        NEED_DATA,
        ClientRequest,
        ConnectionClosed,
        ConnectionTerminated,
        FullCMC,
        GetCACerts,
        GetCSRAttrs,
        ServerKeygen,
        SimpleEnroll,
        SimpleReenroll,
    )
    from estproto._tls import TLSLayer
    from estproto.client import ClientConnection, Credentials

    s = _seeds.codec_seeds()
    csr = s["decode_csr"][0]
    requests: list[ClientRequest] = [
        GetCACerts(), GetCSRAttrs(), SimpleEnroll(csr=csr), SimpleReenroll(csr=csr),
        ServerKeygen(csr=csr), ServerKeygen(csr=csr, kek=_seeds.KEK, kek_id=_seeds.KEK_ID),
        FullCMC(request=s["decode_full_pki_request"][0]), SimpleEnroll(csr=csr, label="tenant"),
        # bit 4 of byte 0 (added later, so older saved inputs keep their meaning)
        ServerKeygen(csr=csr, decryption_key=_seeds.material().kari_p256_key),
        ServerKeygen(csr=csr, decryption_key=_seeds.material().rsa_key),
    ]
    creds = Credentials("alice", "secret")
    plain_config = ch.client_config(tls=False)
    tls_config = ch.client_config("1.3")
    server_ctx = ch.server_tls("1.3")

    def drain(client: ClientConnection) -> bool:
        """Read every event; True once the client has nothing more to say."""
        for _ in range(MAX_EVENTS):
            try:
                event = client.next_event()
            except RemoteProtocolError:
                continue  # the typed error; the connection is closed after it
            if event is NEED_DATA:
                return client.closed
            if isinstance(event, (ConnectionClosed, ConnectionTerminated)):
                return True
        raise AssertionError(f"more than {MAX_EVENTS} events from one input")

    def target(data: bytes) -> None:
        if len(data) < 2:
            return
        request = requests[((data[0] & 7) | ((data[0] >> 1) & 8)) % len(requests)]
        use_tls = bool(data[0] & 8)
        size, payload = data[1], data[2:]
        pieces = [payload] if size == 0 else [payload[i : i + size] for i in range(0, len(payload), size)]
        client = ClientConnection(tls_config if use_tls else plain_config, credentials=creds, now=0.0)
        client.send(request)
        server: TLSLayer | None = None
        if use_tls:
            server = TLSLayer(server_ctx)
            for _ in range(10):
                out = client.data_to_send()
                if out:
                    server.receive_data(out)
                back = server.data_to_send()
                if back:
                    client.receive_data(back, now=0.1)
                if not out and not back:
                    break
            assert server.handshake_complete
        client.data_to_send()
        for piece in pieces:
            if not piece:
                continue
            if server is not None:
                server.write(piece)
                piece = server.data_to_send()
            client.receive_data(piece, now=0.5)
            client.data_to_send()
            if drain(client):
                break
        if server is not None and not client.closed:
            server.close()
            tail = server.data_to_send()
            if tail:
                client.receive_data(tail, now=0.6)
        client.receive_data(b"", now=0.7)
        drain(client)
        client.handle_timer(10_000.0)
        drain(client)
        client.data_to_send()
        assert client.closed

    return {"response": target}


def make_seeds() -> Mapping[str, list[bytes]]:
    from estproto.codecs import multipart, transfer

    s = _seeds.codec_seeds()

    def response(status: str, body: bytes = b"", ctype: str | None = None, extra: str = "") -> bytes:
        head = f"HTTP/1.1 {status}\r\n{extra}Content-Length: {len(body)}\r\n"
        if ctype:
            head += f"Content-Type: {ctype}\r\n"
        return head.encode() + b"\r\n" + body

    certs = transfer.encode_base64(s["decode_certs_only"][0])
    cmc_ok = transfer.encode_base64(s["decode_full_pki_response"][0])
    attrs = transfer.encode_base64(s["decode_csrattrs"][0])
    mt, keygen = multipart.encode_serverkeygen_response(
        s["decode_private_key"][0], s["decode_certs_only"][0], boundary="est")
    mt_enc, keygen_enc = multipart.encode_serverkeygen_response(
        s["open_enveloped_data"][0], s["decode_certs_only"][0], key_encrypted=True, boundary="est")
    mt_kari, keygen_kari = multipart.encode_serverkeygen_response(
        s["open_enveloped_data"][2], s["decode_certs_only"][0], key_encrypted=True, boundary="est")
    mt_ktri, keygen_ktri = multipart.encode_serverkeygen_response(
        s["open_enveloped_data"][1], s["decode_certs_only"][0], key_encrypted=True, boundary="est")
    challenge = 'WWW-Authenticate: Basic realm="est"\r\n'
    per_request = {
        0: response("200 OK", certs, "application/pkcs7-mime"),
        1: response("200 OK", attrs, "application/csrattrs"),
        2: response("200 OK", certs, "application/pkcs7-mime; smime-type=certs-only"),
        3: response("202 Accepted", extra="Retry-After: 60\r\n"),
        4: response("200 OK", keygen, f"multipart/mixed; boundary={mt.boundary}"),
        5: response("200 OK", keygen_enc, f"multipart/mixed; boundary={mt_enc.boundary}"),
        6: response("200 OK", cmc_ok, "application/pkcs7-mime; smime-type=CMC-response"),
        7: response("401 Unauthorized", extra=challenge)
        + response("200 OK", certs, "application/pkcs7-mime"),
        16: response("200 OK", keygen_kari, f"multipart/mixed; boundary={mt_kari.boundary}"),
        17: response("200 OK", keygen_ktri, f"multipart/mixed; boundary={mt_ktri.boundary}"),
    }
    seeds = []
    for index, body in per_request.items():
        for transport in (0, 8):
            seeds.append(bytes([index | transport, 0]) + body)
    seeds.append(bytes([2, 5]) + response("500 Internal Server Error", b"boom", "text/plain"))
    seeds.append(bytes([2, 0]) + response("301 Moved", extra="Location: https://x/\r\n"))
    return {"response": seeds}


if __name__ == "__main__":
    _harness.main(__doc__.splitlines()[0], make_targets, make_seeds)
