"""Encryption of stored face templates (gallery embeddings) at rest: AES-256-GCM from ``cryptography``.

The key comes from the environment variable :data:`ENV_KEY` (``LOOKTHROUGH_GALLERY_KEY``): any string (a
passphrase or a random token: ``python -c "import secrets; print(secrets.token_urlsafe(32))"``). It is
stretched with scrypt (``n=2**14, r=8, p=1``, ~16 MB, ~50 ms) and a random 16-byte salt stored in the gallery,
so the same passphrase gives a different AES key per gallery.

Each stored template is ``MAGIC || nonce (12 bytes) || AES-GCM(float32 bytes) || tag (16 bytes)`` with the
identity's name as associated data: a row moved to another name, a flipped bit or a wrong key fails
authentication instead of returning a wrong template. A ``key_check`` token (a known plaintext encrypted the same
way) lets a gallery say "wrong key" before any row is read.

Only templates are encrypted; names, sources and timestamps are not (they are needed to list and remove people
without the key). What is in memory for search is plaintext: this protects files, backups and exports.
``cryptography`` is imported lazily: galleries without a key never need it.
"""
from __future__ import annotations

import base64
import os

from sdk.errors import GalleryError

#: Environment variable holding the gallery key (a passphrase or token; empty = unset).
ENV_KEY = "LOOKTHROUGH_GALLERY_KEY"
#: Prefix of every encrypted template blob (format version 1).
MAGIC = b"LTE1"
NONCE_BYTES = 12
TAG_BYTES = 16
SALT_BYTES = 16
_CHECK_PLAINTEXT = b"lookthrough gallery key check v1"
_CHECK_AAD = b"key_check"


def key_from_env() -> str | None:
    """The key in ``$LOOKTHROUGH_GALLERY_KEY``, or ``None`` when it is unset or empty."""
    value = os.environ.get(ENV_KEY, "")
    return value or None


def _aesgcm():
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:  # pragma: no cover - cryptography is in requirements/runtime.txt
        raise GalleryError("gallery encryption needs the 'cryptography' package (pip install cryptography)") from None
    return AESGCM


class TemplateCipher:
    """AES-256-GCM for one gallery: the key derived from ``passphrase`` and the gallery's ``salt``.

    Args:
        passphrase: the user's key (str or bytes, non-empty).
        salt: 16 random bytes stored in the gallery (:func:`new_salt`).
    """

    def __init__(self, passphrase: str | bytes, salt: bytes):
        if isinstance(passphrase, str):
            passphrase = passphrase.encode("utf-8")
        if not isinstance(passphrase, bytes) or not passphrase:
            raise GalleryError("gallery key must be a non-empty string")
        if not isinstance(salt, bytes) or len(salt) != SALT_BYTES:
            raise GalleryError(f"gallery key salt must be {SALT_BYTES} bytes")
        aesgcm = _aesgcm()  # a clear GalleryError when cryptography is missing
        from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

        key = Scrypt(salt=salt, length=32, n=2 ** 14, r=8, p=1).derive(passphrase)
        self._aead = aesgcm(key)
        self.salt = salt

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        """``MAGIC || nonce || ciphertext+tag`` of ``plaintext`` bound to ``aad``."""
        nonce = os.urandom(NONCE_BYTES)
        return MAGIC + nonce + self._aead.encrypt(nonce, plaintext, aad)

    def decrypt(self, blob: bytes, aad: bytes) -> bytes | None:
        """Plaintext of a :meth:`encrypt` blob, or ``None`` when it does not authenticate (wrong key, altered
        bytes, other ``aad``) or is not an encrypted blob at all."""
        from cryptography.exceptions import InvalidTag

        if not isinstance(blob, bytes) or len(blob) < len(MAGIC) + NONCE_BYTES + TAG_BYTES or not blob.startswith(MAGIC):
            return None
        nonce = blob[len(MAGIC):len(MAGIC) + NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, blob[len(MAGIC) + NONCE_BYTES:], aad)
        except InvalidTag:
            return None

    def key_check(self) -> str:
        """A token (base64 text) that :meth:`matches` accepts only under the same key and salt."""
        return base64.b64encode(self.encrypt(_CHECK_PLAINTEXT, _CHECK_AAD)).decode("ascii")

    def matches(self, token: str) -> bool:
        """Does ``token`` (from :meth:`key_check`) decrypt under this key?"""
        try:
            blob = base64.b64decode(token.encode("ascii"), validate=True)
        except (ValueError, AttributeError):
            return False
        return self.decrypt(blob, _CHECK_AAD) == _CHECK_PLAINTEXT


def new_salt() -> bytes:
    """16 random bytes for a new encrypted gallery."""
    return os.urandom(SALT_BYTES)


def encode_salt(salt: bytes) -> str:
    """Salt as base64 text (how the gallery stores it)."""
    return base64.b64encode(salt).decode("ascii")


def decode_salt(text: str) -> bytes:
    """Inverse of :func:`encode_salt`; raises :class:`GalleryError` on a malformed value."""
    try:
        salt = base64.b64decode(str(text).encode("ascii"), validate=True)
    except ValueError:
        raise GalleryError("gallery key salt is not valid base64 (file damaged?)") from None
    if len(salt) != SALT_BYTES:
        raise GalleryError(f"gallery key salt has {len(salt)} bytes, expected {SALT_BYTES} (file damaged?)")
    return salt
