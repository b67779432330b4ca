"""Named size limits, each with the reason for its default.

Every decoder checks its input against one of these *before* decoding, so a
hostile peer cannot make us allocate or recurse without bound. The connection
configs (server and client) take their defaults from here and let callers
override them.
"""

from __future__ import annotations

#: Largest EST message body (base64 text) we accept. A CSR for RSA-16384 with a
#: dozen extensions is under 8 KiB and a cacerts rollover set with long chains a
#: few tens of KiB; 1 MiB leaves room for CMC batches and still bounds memory.
#: (nginx's client_max_body_size defaults to 1 MiB for the same reason.)
MAX_BODY_SIZE: int = 1024 * 1024

#: Largest DER object we decode. base64 expands 3 bytes into 4, so this is the
#: most a MAX_BODY_SIZE body can carry.
MAX_DER_SIZE: int = MAX_BODY_SIZE * 3 // 4

#: Most certificates we read out of one certs-only PKCS#7. A rollover cacerts
#: response holds 4 plus chains; nothing in EST needs hundreds.
MAX_CERTIFICATES = 256

#: Most parts we read from a multipart/mixed body. serverkeygen sends exactly
#: two; a few more are tolerated (and ignored) for forward compatibility.
MAX_MULTIPART_PARTS = 8

#: Most AttrOrOID entries in a csrattrs response; real servers send < 20.
MAX_CSRATTRS_ENTRIES = 256

#: Longest media type header value we parse (RFC 7231 has no limit; real EST
#: media types are under 100 bytes, multipart boundaries at most 70 chars).
MAX_MEDIA_TYPE_LENGTH = 1024
