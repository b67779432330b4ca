"""CA keys kept in a PKCS#11 token (an HSM, or SoftHSM2), through python-pkcs11.

A key is found by its CKA_LABEL in the token with a given label; its
private half is generated in the token (sensitive, not extractable) and
never leaves it: estproto only asks the token to sign. P-256 and RSA keys
are supported, the kinds every token offers; ECDSA is done as CKM_ECDSA
over a digest we compute (tokens seldom implement CKM_ECDSA_SHA256), RSA
as CKM_SHAxxx_RSA_PKCS.

The PIN comes from a file (its path recorded in config.json) or from the
environment variable :data:`PIN_ENV`, never from a command-line flag, and
appears in no message or log.

One process shares one logged-in session per token: PKCS#11 login state
belongs to the application, not the session (a second C_Login fails, and
the first session's C_Logout would log every other one out), so the
session is reference-counted and closed with its last user. Calls on it
are serialised by a lock: a session runs one operation at a time.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from asn1crypto import core, keys as asn1_keys
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ..codecs.external_key import ExternalPublicKey, ExternalSigningKey
from .errors import CAError, SignerError

__all__ = ["PIN_ENV", "Pkcs11Settings", "TokenKey", "open_key", "create_key"]

#: Environment variable holding the token's user PIN when no PIN file is set.
PIN_ENV = "ESTPROTO_PKCS11_PIN"

#: Most bytes read from a PIN file (PINs are short; a wrong path to a large
#: file should not be read whole).
_MAX_PIN_FILE = 1024

_P256_OID = "1.2.840.10045.3.1.7"
_CURVES: Mapping[str, ec.EllipticCurve] = {
    _P256_OID: ec.SECP256R1(), "1.3.132.0.34": ec.SECP384R1(), "1.3.132.0.35": ec.SECP521R1(),
}


@dataclass(frozen=True)
class Pkcs11Settings:
    """Where a CA key lives: the PKCS#11 module, the token and the key's label."""

    module: str
    token_label: str
    key_label: str
    #: A file holding the user PIN; None reads :data:`PIN_ENV`.
    pin_file: str | None = None

    def __post_init__(self) -> None:
        for name in ("module", "token_label", "key_label"):
            if not getattr(self, name):
                raise CAError(f"PKCS#11: {name.replace('_', ' ')} must not be empty")

    def with_key_label(self, key_label: str) -> Pkcs11Settings:
        return Pkcs11Settings(self.module, self.token_label, key_label, self.pin_file)

    def to_config(self) -> dict[str, Any]:
        """What config.json records (never the PIN)."""
        return {"module": self.module, "token_label": self.token_label,
                "key_label": self.key_label, "pin_file": self.pin_file}

    @classmethod
    def from_config(cls, value: object) -> Pkcs11Settings:
        """Raises CAError for anything but what :meth:`to_config` writes."""
        if not isinstance(value, dict):
            raise CAError("config.json: pkcs11 is not an object")
        module, token_label, key_label = (value.get(k) for k in ("module", "token_label", "key_label"))
        pin_file = value.get("pin_file")
        if not (isinstance(module, str) and isinstance(token_label, str) and isinstance(key_label, str)
                and isinstance(pin_file, (str, type(None)))):
            raise CAError("config.json: pkcs11 needs module, token_label and key_label strings")
        return cls(module, token_label, key_label, pin_file)

    def read_pin(self) -> str:
        """The user PIN.

        Raises:
            CAError: no PIN file and no :data:`PIN_ENV`, or an unreadable file.
        """
        if self.pin_file is not None:
            try:
                with open(self.pin_file, "rb") as f:
                    data = f.read(_MAX_PIN_FILE + 1)
            except OSError as exc:
                raise CAError(f"PKCS#11 PIN file {self.pin_file}: {exc.strerror}") from None
            if len(data) > _MAX_PIN_FILE:
                raise CAError(f"PKCS#11 PIN file {self.pin_file}: larger than {_MAX_PIN_FILE} bytes")
            pin = data.decode("utf-8", "replace").rstrip("\r\n")
        else:
            pin = os.environ.get(PIN_ENV, "")
        if not pin:
            where = f"the file {self.pin_file} is empty" if self.pin_file else f"set {PIN_ENV}"
            raise CAError(f"PKCS#11 token {self.token_label!r} needs its user PIN: {where}")
        return pin


class _Session:
    """One logged-in session on a token, shared within the process."""

    _lock = threading.Lock()
    _open: dict[tuple[str, str], _Session] = {}

    def __init__(self, key: tuple[str, str], session: Any) -> None:
        self.key = key
        self.session = session
        self.users = 0
        #: A PKCS#11 session runs one operation at a time.
        self.lock = threading.Lock()

    @classmethod
    def acquire(cls, settings: Pkcs11Settings) -> _Session:
        key = (str(Path(settings.module).resolve()), settings.token_label)
        with cls._lock:
            shared = cls._open.get(key)
            if shared is None:
                shared = cls._open[key] = cls(key, _login(settings))
            shared.users += 1
            return shared

    def reopen(self, settings: Pkcs11Settings) -> None:
        """Replace a session the token no longer honours with a new login.

        Raises:
            CAError: the token cannot be opened (still gone, say).
        """
        with self.lock:
            try:
                self.session.close()
            except Exception:  # already invalid: that is why we are here
                pass
            self.session = _login(settings)

    def release(self) -> None:
        with self._lock:
            self.users -= 1
            if self.users > 0:
                return
            del self._open[self.key]
        try:
            with self.lock:
                self.session.close()
        except Exception:  # the token may be gone; the process keeps running
            pass


def _login(settings: Pkcs11Settings) -> Any:
    """A new read-write session on the token, logged in as its user."""
    pkcs11 = _library()
    pin = settings.read_pin()
    try:
        token = pkcs11.lib(settings.module).get_token(token_label=settings.token_label)
        return token.open(user_pin=pin, rw=True)
    except pkcs11.exceptions.NoSuchToken:
        raise CAError(f"PKCS#11: no token labelled {settings.token_label!r} "
                      f"in {settings.module}") from None
    except pkcs11.exceptions.MultipleTokensReturned:
        raise CAError(f"PKCS#11: several tokens labelled {settings.token_label!r}") from None
    except (pkcs11.exceptions.PinIncorrect, pkcs11.exceptions.PinInvalid,
            pkcs11.exceptions.PinLenRange):
        raise CAError(f"PKCS#11: the PIN of token {settings.token_label!r} "
                      f"is not correct") from None
    except pkcs11.exceptions.PinLocked:
        raise CAError(f"PKCS#11: token {settings.token_label!r} is locked "
                      f"(too many wrong PINs)") from None
    except (OSError, RuntimeError, pkcs11.exceptions.PKCS11Error) as exc:
        raise CAError(f"PKCS#11: cannot open token {settings.token_label!r} with "
                      f"{settings.module}: {type(exc).__name__} {exc}") from None


def _lost(pkcs11: Any) -> tuple[type[Exception], ...]:
    """The errors after which the session or the key handle is no longer
    good, while the key itself may well be there."""
    e = pkcs11.exceptions
    return (e.ObjectHandleInvalid, e.KeyHandleInvalid, e.SessionHandleInvalid, e.SessionClosed,
            e.DeviceRemoved, e.DeviceError, e.TokenNotPresent, e.TokenNotRecognised,
            e.UserNotLoggedIn)


def _library() -> Any:
    try:
        import pkcs11
    except ImportError:
        raise CAError("a PKCS#11 CA key needs python-pkcs11: pip install 'estproto[pkcs11]'") from None
    return pkcs11


class TokenKey(ExternalSigningKey):
    """A private key in a token, used only to sign."""

    def __init__(self, settings: Pkcs11Settings, shared: _Session, private: Any,
                 public: ExternalPublicKey) -> None:
        self.settings = settings
        self._shared = shared
        self._private = private
        self._public = public
        self._closed = False
        self._reattach_lock = threading.Lock()

    def public_key(self) -> ExternalPublicKey:
        return self._public

    def sign(self, data: bytes, algorithm: hashes.HashAlgorithm) -> bytes:
        pkcs11 = _library()
        if self._closed:
            raise SignerError("the token key is closed")
        try:
            try:
                return self._sign_once(data, algorithm)
            except _lost(pkcs11):
                # The token dropped our session or the key's handle (a
                # network HSM restarted, a token re-plugged): find the key
                # again, in a new session if need be, and try once more.
                self._reattach()
                return self._sign_once(data, algorithm)
        except pkcs11.exceptions.PKCS11Error as exc:
            raise SignerError(f"PKCS#11 token {self.settings.token_label!r}, key "
                              f"{self.settings.key_label!r}: {type(exc).__name__}") from None

    def _sign_once(self, data: bytes, algorithm: hashes.HashAlgorithm) -> bytes:
        pkcs11 = _library()
        if isinstance(self._public, ec.EllipticCurvePublicKey):
            digest = hashes.Hash(algorithm)
            digest.update(data)
            with self._shared.lock:
                raw = self._private.sign(digest.finalize(), mechanism=pkcs11.Mechanism.ECDSA)
            return _ecdsa_der(raw)
        mechanism = {
            "sha256": pkcs11.Mechanism.SHA256_RSA_PKCS,
            "sha384": pkcs11.Mechanism.SHA384_RSA_PKCS,
            "sha512": pkcs11.Mechanism.SHA512_RSA_PKCS,
        }.get(algorithm.name)
        if mechanism is None:
            raise SignerError(f"the token key does not sign with {algorithm.name}")
        with self._shared.lock:
            return bytes(self._private.sign(data, mechanism=mechanism))

    def _reattach(self) -> None:
        """Find the key again by its label, logging in anew if the session
        is gone too; the key found must be the one we had."""
        pkcs11 = _library()
        with self._reattach_lock:
            try:
                found = _find(self._shared, self.settings.key_label)
            except (CAError, pkcs11.exceptions.PKCS11Error):
                found = None
            if found is None:
                try:
                    self._shared.reopen(self.settings)
                    found = _find(self._shared, self.settings.key_label)
                except CAError as exc:
                    raise SignerError(str(exc)) from None
            if found is None or found[1] != self._public:
                raise SignerError(f"PKCS#11 token {self.settings.token_label!r} no longer holds "
                                  f"the CA key {self.settings.key_label!r}")
            self._private = found[0]

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._shared.release()


def open_key(settings: Pkcs11Settings) -> TokenKey:
    """The key labelled ``settings.key_label`` in the token.

    Raises:
        CAError: no such token or key, a wrong PIN, an unsupported key.
    """
    shared = _Session.acquire(settings)
    try:
        found = _find(shared, settings.key_label)
        if found is None:
            raise CAError(f"PKCS#11: token {settings.token_label!r} holds no key labelled "
                          f"{settings.key_label!r}")
        return TokenKey(settings, shared, *found)
    except BaseException:
        shared.release()
        raise


def create_key(settings: Pkcs11Settings, key_type: str) -> TokenKey:
    """A new key pair (*key_type* "p256" or "rsa": 2048 bits) generated in
    the token under ``settings.key_label``; an existing key of that label
    is used instead (one made with the token's own tools, say).

    Raises:
        CAError: as :func:`open_key`, or the token cannot make the key.
    """
    if key_type not in ("p256", "rsa"):
        raise CAError(f"a PKCS#11 CA key is p256 or rsa, not {key_type}")
    shared = _Session.acquire(settings)
    try:
        found = _find(shared, settings.key_label)
        if found is None:
            found = _generate(shared, settings.key_label, key_type)
        return TokenKey(settings, shared, *found)
    except BaseException:
        shared.release()
        raise


def _find(shared: _Session, label: str) -> tuple[Any, ExternalPublicKey] | None:
    pkcs11 = _library()
    kind = pkcs11.ObjectClass
    with shared.lock:
        try:
            private = shared.session.get_key(object_class=kind.PRIVATE_KEY, label=label)
        except pkcs11.exceptions.NoSuchKey:
            return None
        except pkcs11.exceptions.MultipleObjectsReturned:
            raise CAError(f"PKCS#11: several private keys labelled {label!r}") from None
        try:
            public = shared.session.get_key(object_class=kind.PUBLIC_KEY, label=label)
        except (pkcs11.exceptions.NoSuchKey, pkcs11.exceptions.MultipleObjectsReturned):
            raise CAError(f"PKCS#11: key {label!r} needs exactly one public key object "
                          f"with the same label") from None
        return private, _public_key(public)


def _generate(shared: _Session, label: str, key_type: str) -> tuple[Any, ExternalPublicKey]:
    pkcs11 = _library()
    from pkcs11.util.ec import encode_named_curve_parameters

    attr = pkcs11.Attribute
    private_template = {attr.SENSITIVE: True, attr.EXTRACTABLE: False, attr.SIGN: True,
                        attr.TOKEN: True, attr.PRIVATE: True}
    try:
        with shared.lock:
            if key_type == "rsa":
                public, private = shared.session.generate_keypair(
                    pkcs11.KeyType.RSA, 2048, store=True, label=label,
                    private_template=private_template)
            else:
                params = shared.session.create_domain_parameters(
                    pkcs11.KeyType.EC, {attr.EC_PARAMS: encode_named_curve_parameters(_P256_OID)},
                    local=True)
                public, private = params.generate_keypair(
                    store=True, label=label, private_template=private_template)
    except pkcs11.exceptions.PKCS11Error as exc:
        raise CAError(f"PKCS#11: the token could not generate a {key_type} key: "
                      f"{type(exc).__name__}") from None
    return private, _public_key(public)


def _public_key(public: Any) -> ExternalPublicKey:
    pkcs11 = _library()
    attr = pkcs11.Attribute
    if public.key_type == pkcs11.KeyType.RSA:
        n = int.from_bytes(public[attr.MODULUS], "big")
        e = int.from_bytes(public[attr.PUBLIC_EXPONENT], "big")
        return rsa.RSAPublicNumbers(e, n).public_key()
    if public.key_type == pkcs11.KeyType.EC:
        params = asn1_keys.ECDomainParameters.load(bytes(public[attr.EC_PARAMS]))
        curve = _CURVES.get(params.chosen.dotted) if params.name == "named" else None
        if curve is None:
            raise CAError("PKCS#11: the key's curve is not P-256, P-384 or P-521")
        point = bytes(public[attr.EC_POINT])
        try:
            # PKCS#11 2.40 wraps the point in a DER OCTET STRING; some tokens do not.
            point = core.OctetString.load(point).native
        except ValueError:
            pass
        try:
            return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
        except ValueError:
            raise CAError("PKCS#11: the key's EC point is not valid") from None
    raise CAError(f"PKCS#11: key type {public.key_type!r} is neither RSA nor EC")


def _ecdsa_der(raw: bytes) -> bytes:
    """PKCS#11's r || s as the DER Ecdsa-Sig-Value X.509 and CMS carry."""
    half = len(raw) // 2
    return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))
