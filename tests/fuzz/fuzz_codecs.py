"""Fuzz every estproto decoder: only the typed error, never another exception.

One target per decoder (``--list`` names them): the codecs in
:mod:`estproto.codecs` must return or raise :class:`~estproto.DecodeError`
(RFC 7030 payloads: base64, media types, PKCS#10, certs-only, csrattrs,
multipart/serverkeygen, PKCS#8, EnvelopedData, CMC, SignedData); the HTTP
authentication parsers (RFC 7617, RFC 7616, RFC 7235) must return or raise
:class:`~estproto.RemoteProtocolError`. Decoded values are also walked (their
lazy properties read), since a view that raises later is the same bug.

Run (see README.md): ``python tests/fuzz/fuzz_codecs.py [--target NAME]
[--plain] [-max_total_time=SECONDS] [CORPUS_DIR]``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import _harness
import _seeds


def _walk(value: Any) -> None:
    """Read every public attribute and property of a decoded value."""
    for name in dir(value):
        if not name.startswith("_"):
            attr = getattr(value, name)
            if callable(attr) and name in ("text",):
                attr()


def make_targets() -> Mapping[str, _harness.Target]:
    from estproto import DecodeError, ProtocolError, RemoteProtocolError, auth
    from estproto.codecs import cmc, csrattrs, mediatype, multipart, pkcs7, pkcs10, serverkey
    from estproto.codecs import signeddata, transfer

    m = _seeds.material()
    multipart_type = mediatype.parse_media_type("multipart/mixed; boundary=est")

    def only(errors: tuple[type[BaseException], ...], fn: Callable[[bytes], None]) -> _harness.Target:
        def run(data: bytes) -> None:
            try:
                fn(data)
            except errors:
                pass

        return run

    def decode_base64(data: bytes) -> None:
        for lenient in (False, True):
            try:
                assert transfer.decode_base64(data, lenient=lenient)
            except DecodeError:
                pass

    def parse_media_type(data: bytes) -> None:
        mt = mediatype.parse_media_type(data)
        mt.smime_type, mt.boundary, mediatype.format_media_type(mt)  # noqa: B018
        mediatype.matches(mt, multipart_type)

    def decode_csr(data: bytes) -> None:
        for verify in (True, False):
            try:
                csr = pkcs10.decode_csr(data, verify=verify)
            except DecodeError:
                continue
            csr.get_extension("2.5.29.17")
            pkcs10.matches_channel_binding(csr, b"\x00" * 32)

    def decode_certs_only(data: bytes) -> None:
        certs = pkcs7.decode_certs_only(data)
        pkcs7.classify_cacerts(certs)

    def decode_csrattrs(data: bytes) -> None:
        attrs = csrattrs.decode_csrattrs(data)
        _walk(attrs)
        template = attrs.template
        if template is not None:
            _walk(template)
        for ext in attrs.extension_requests:
            _walk(ext)

    def parse_multipart(data: bytes) -> None:
        for part in multipart.parse_multipart(data, multipart_type):
            try:
                part.content_type  # noqa: B018
            except DecodeError:
                pass

    def decode_serverkeygen_response(data: bytes) -> None:
        for lenient in (False, True):
            try:
                multipart.decode_serverkeygen_response(data, multipart_type, lenient=lenient)
            except DecodeError:
                pass

    def decode_private_key(data: bytes) -> None:
        for lenient in (False, True):
            try:
                serverkey.decode_private_key(data, lenient=lenient)
            except DecodeError:
                pass

    # Every kind of recipient key: kekri (KEK), ktri (RSA), kari (the fixed
    # P-256 and P-384 keys; P-384 also picked by certificate, so the rid
    # matching runs, and P-256 with no identifier, trying every kari).
    open_keys: list[dict[str, Any]] = [
        {"kek": _seeds.KEK, "key_identifier": _seeds.KEK_ID},
        {"recipient_private_key": m.rsa_key},
        {"recipient_private_key": m.kari_p256_key},
        {"recipient_private_key": m.kari_p384_key, "recipient_certificate": m.kari_p384_cert},
    ]
    # The key package: signed by the CA (checked against it), or, for the
    # P-256 kari, by whoever's certificate the message carries (so an input
    # found past the signature check replays in another process too).
    package_keys: list[dict[str, Any]] = [
        {"kek": _seeds.KEK, "verify_with": m.ca, "lenient": True},
        {"recipient_private_key": m.kari_p256_key},
        {"recipient_private_key": m.kari_p384_key, "verify_with": m.ca, "lenient": True},
    ]

    def open_enveloped_data(data: bytes) -> None:
        for kwargs in open_keys:
            try:
                serverkey.open_enveloped_data(data, **kwargs)
            except DecodeError:
                pass
        for kwargs in package_keys:
            try:
                serverkey.decrypt_key_package(data, **kwargs)
            except DecodeError:
                pass

    def decode_full_pki_request(data: bytes) -> None:
        for verify, lenient in ((True, False), (False, True)):
            try:
                cmc.decode_full_pki_request(data, verify=verify, lenient=lenient)
            except DecodeError:
                pass

    def decode_full_pki_response(data: bytes) -> None:
        for lenient in (False, True):
            try:
                cmc.decode_full_pki_response(data, lenient=lenient, request_body_part_ids=[1])
            except DecodeError:
                pass

    def parse_signed_data(data: bytes) -> None:
        for lenient in (False, True):
            try:
                content = signeddata.parse_signed_data(data, lenient=lenient)
            except DecodeError:
                continue
            for index in range(len(content.signers)):
                cert = signeddata.find_signer_certificate(content, index)
                if cert is None:
                    continue
                try:
                    key = cert.public_key()
                except ValueError:
                    continue  # our call, not estproto's: cryptography parses keys lazily
                try:
                    signeddata.verify_signer(content, index, key)  # type: ignore[arg-type]
                except DecodeError:
                    pass

    def parse_authorization(data: bytes) -> None:
        for text in (data.decode("latin-1"), data.decode("utf-8", "surrogateescape")):
            try:
                auth.parse_authorization(text)
            except RemoteProtocolError:
                pass

    def parse_challenges(data: bytes) -> None:
        values = data.decode("latin-1").split("\n")
        try:
            challenges = auth.parse_challenges(values)
        except RemoteProtocolError:
            return
        for c in challenges:
            auth.challenge_key(c)
        try:
            auth.answer_challenge(challenges, "alice", "secret", "POST",
                                  "/.well-known/est/simpleenroll", server_authorized=True)
        except ProtocolError:
            pass  # LocalProtocolError: a challenge we cannot answer (the client catches it)

    decode_error = (DecodeError,)
    return {
        "decode_base64": decode_base64,
        "parse_media_type": only(decode_error, parse_media_type),
        "decode_csr": decode_csr,
        "decode_certs_only": only(decode_error, decode_certs_only),
        "decode_csrattrs": only(decode_error, decode_csrattrs),
        "parse_multipart": only(decode_error, parse_multipart),
        "decode_serverkeygen_response": decode_serverkeygen_response,
        "decode_private_key": decode_private_key,
        "open_enveloped_data": open_enveloped_data,
        "decode_full_pki_request": decode_full_pki_request,
        "decode_full_pki_response": decode_full_pki_response,
        "parse_signed_data": parse_signed_data,
        "parse_authorization": parse_authorization,
        "parse_challenges": parse_challenges,
    }


if __name__ == "__main__":
    _harness.main(__doc__.splitlines()[0], make_targets, _seeds.codec_seeds)
