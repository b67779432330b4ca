"""The embedded CA's own errors (store errors live in :mod:`.store`)."""

from __future__ import annotations

from ..codecs import cmc

__all__ = ["CAError", "SignerError", "Refused"]


class CAError(Exception):
    """The CA cannot be set up or loaded (not initialised, unreadable or
    inconsistent files, unsupported settings)."""


class SignerError(Exception):
    """The CA's key could not sign just now (a token unreachable, its
    session lost, a bad signature returned): answered 503, like a store
    failure, since nothing was issued."""


class Refused(Exception):
    """A request the CA's policy refuses: answered 4xx (CMC: the fail info)."""

    def __init__(self, status: int, reason: str,
                 fail_info: cmc.CMCFailInfo = cmc.CMCFailInfo.BAD_REQUEST) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.fail_info = fail_info
