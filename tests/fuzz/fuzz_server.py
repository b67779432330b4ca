"""Fuzz the server connection: arbitrary bytes after a real TLS handshake, or over plain HTTP.

The invariant of :class:`estproto.server.ServerConnection` ("peer faults
never raise out of next_event"), stronger than h11's: whatever arrives,
``receive_data``, ``next_event``, ``send`` (of a valid answer),
``data_to_send`` and ``handle_timer`` return normally, the connection ends in
finitely many events, and a request event is always answerable.

Targets (the input's first byte picks how its bytes are cut into reads: 0 =
one read, n = reads of n bytes; the rest is the payload):

* ``tls_plaintext``: a real TLS 1.2/1.3 handshake with a real client
  (estproto's TLS layer, memory BIOs), then the payload is encrypted by the
  client and delivered as valid TLS records: the HTTP and EST layers see
  arbitrary plaintext (RFC 7030 3.2 paths, 3.2.3 Authorization, bodies).
* ``tls_records``: the same handshake, then the payload delivered as raw
  ciphertext (broken records, alerts, post-handshake messages).
* ``tls_handshake``: the payload is the very first bytes of the connection
  (garbage and mutated ClientHellos).
* ``plain``: ``ServerConfig(tls=None)``, the payload is the HTTP byte stream.

The server answers every request event with a canned valid response
(authentication challenges for requests without credentials), so the
response path runs too.
"""

from __future__ import annotations

from typing import Mapping

import _harness
import _seeds

#: Most events one input may produce; a connection that keeps producing
#: events without new input is a finding (a loop).
MAX_EVENTS = 10_000


def make_targets() -> Mapping[str, _harness.Target]:
    import conn_helpers as ch
    from estproto import auth
    from estproto._events import (
        NEED_DATA,
        PAUSED,
        AuthenticationRequired,
        CACertsRequest,
        CACertsResponse,
        CertificateResponse,
        ConnectionClosed,
        CSRAttrsRequest,
        CSRAttrsResponse,
        FullCMCRequest,
        FullCMCResponse,
        ServerKeygenRequest,
        ServerKeygenResponse,
        ServerRequest,
        ServerResponse,
    )
    from estproto._tls import TLSError, TLSLayer
    from estproto.server import ServerConnection

    p = ch.get_pki()
    cmc_ok = _seeds.codec_seeds()["decode_full_pki_response"][0]
    configs = {
        "1.3": ch.server_config("1.3", labels=frozenset({"tenant"}), max_label_segments=2),
        "1.2": ch.server_config("1.2", labels=frozenset({"tenant"})),
        "plain": ch.server_config(tls=False, labels=frozenset({"tenant"})),
    }

    def answer(event: ServerRequest) -> ServerResponse:
        if event.credentials is None and not isinstance(event, CACertsRequest):
            return AuthenticationRequired((auth.basic_challenge("est"),))
        if isinstance(event, CACertsRequest):
            return CACertsResponse((p.ca,))
        if isinstance(event, CSRAttrsRequest):
            return CSRAttrsResponse(None)
        if isinstance(event, ServerKeygenRequest):
            return ServerKeygenResponse(p.device_cert, private_key=p.device_key)
        if isinstance(event, FullCMCRequest):
            return FullCMCResponse(cmc_ok)
        return CertificateResponse(p.device_cert)

    def drain(server: ServerConnection) -> bool:
        """Take every event, answering requests; True once the connection is over."""
        for _ in range(MAX_EVENTS):
            event = server.next_event()
            if event is NEED_DATA or event is PAUSED:
                assert event is NEED_DATA, "PAUSED with no request outstanding"
                return False
            if isinstance(event, ConnectionClosed):
                return True
            if isinstance(event, ServerRequest):
                server.send(answer(event))
            # RequestRejected (already answered) and ConnectionTerminated: go on.
        raise AssertionError(f"more than {MAX_EVENTS} events from one input")

    def chunks(data: bytes) -> tuple[list[bytes], bytes]:
        if not data:
            return [], b""
        size, payload = data[0], data[1:]
        if size == 0:
            return [payload], payload
        return [payload[i : i + size] for i in range(0, len(payload), size)], payload

    def finish(server: ServerConnection) -> None:
        server.receive_data(b"", now=1.0)
        drain(server)
        server.data_to_send()
        server.handle_timer(10_000.0)
        drain(server)
        server.data_to_send()
        assert server.closed

    def handshake(version: str) -> tuple[ServerConnection, TLSLayer]:
        server = ServerConnection(configs[version], now=0.0)
        client = TLSLayer(ch.client_tls(version), server_hostname="127.0.0.1")
        for _ in range(10):
            out = client.data_to_send()
            if out:
                server.receive_data(out, now=0.0)
            drain(server)
            back = server.data_to_send()
            if back:
                client.receive_data(back)
            if client.handshake_complete and not out and not back:
                break
        assert client.handshake_complete and server.state.value != "handshaking"
        return server, client

    def tls_plaintext(data: bytes) -> None:
        version = "1.2" if data[:1] and data[0] & 0x80 else "1.3"
        server, client = handshake(version)
        pieces, _ = chunks(data)
        for piece in pieces:
            if not piece:
                continue
            try:
                client.write(piece)
            except TLSError:
                break  # the server closed TLS; the client cannot write more
            server.receive_data(client.data_to_send(), now=0.5)
            drain(server)
            back = server.data_to_send()
            try:
                if back:
                    client.receive_data(back)
                    client.read()
            except TLSError:
                break
            if server.closed:
                break
        finish(server)

    def tls_records(data: bytes) -> None:
        version = "1.2" if data[:1] and data[0] & 0x80 else "1.3"
        server, _client = handshake(version)
        for piece in chunks(data)[0]:
            server.receive_data(piece, now=0.5)
            drain(server)
            server.data_to_send()
        finish(server)

    def raw(version: str, data: bytes) -> None:
        server = ServerConnection(configs[version], now=0.0)
        for piece in chunks(data)[0]:
            server.receive_data(piece, now=0.5)
            drain(server)
            server.data_to_send()
        finish(server)

    def tls_handshake(data: bytes) -> None:
        raw("1.3", data)

    def plain(data: bytes) -> None:
        raw("plain", data)

    return {
        "tls_plaintext": tls_plaintext,
        "tls_records": tls_records,
        "tls_handshake": tls_handshake,
        "plain": plain,
    }


def make_seeds() -> Mapping[str, list[bytes]]:
    import conn_helpers as ch
    from estproto import auth
    from estproto._tls import TLSLayer
    from estproto.codecs import transfer

    s = _seeds.codec_seeds()
    basic = auth.basic_authorization("alice", "secret")

    def request(method: str, path: str, body: bytes = b"", ctype: str = "application/pkcs10",
                extra: str = "") -> bytes:
        head = f"{method} {path} HTTP/1.1\r\nHost: est\r\nAuthorization: {basic}\r\n{extra}"
        if method == "POST":
            head += f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
        return head.encode() + b"\r\n" + body

    csr_b64 = transfer.encode_base64(s["decode_csr"][1])
    cmc_b64 = transfer.encode_base64(s["decode_full_pki_request"][0])
    http = [
        request("GET", "/.well-known/est/cacerts"),
        request("GET", "/.well-known/est/tenant/csrattrs"),
        request("POST", "/.well-known/est/simpleenroll", csr_b64),
        request("POST", "/.well-known/est/tenant/simplereenroll", csr_b64),
        request("POST", "/.well-known/est/serverkeygen", csr_b64, extra="Expect: 100-continue\r\n"),
        request("POST", "/.well-known/est/fullcmc", cmc_b64,
                ctype="application/pkcs7-mime; smime-type=CMC-request"),
        request("GET", "/.well-known/est/cacerts") + request("GET", "/.well-known/est/csrattrs"),
        b"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/pkcs10\r\n\r\n10\r\n" + csr_b64[:16] + b"\r\n0\r\n\r\n",
    ]
    # A real ClientHello (TLS 1.3 and 1.2) for the handshake target.
    hellos = [TLSLayer(ch.client_tls(v), server_hostname="127.0.0.1").data_to_send() for v in ("1.3", "1.2")]
    with_sizes = [bytes([size]) + body for body in http for size in (0, 7)]
    return {
        "tls_plaintext": with_sizes + [bytes([0x80]) + body for body in http[:2]],
        "tls_records": [b"\x00\x17\x03\x03\x00\x05hello", b"\x80\x15\x03\x03\x00\x02\x02\x28"],
        "tls_handshake": [b"\x00" + h for h in hellos] + [b"\x05" + hellos[0]],
        "plain": with_sizes,
    }


if __name__ == "__main__":
    _harness.main(__doc__.splitlines()[0], make_targets, make_seeds)
