"""The RFC example messages (RFC 7030 Appendix A and 4.5.2, RFC 9908 section 5).

Copied from the project's shared vectors into tests/data/vectors/, base64 exactly
as printed in the RFCs (line breaks kept). See that folder's README.md.
"""

from __future__ import annotations

import base64
from pathlib import Path

VECTORS = Path(__file__).resolve().parent / "data" / "vectors"


def vector_text(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


def vector_der(name: str) -> bytes:
    return base64.b64decode(b"".join(vector_text(name).split()))
