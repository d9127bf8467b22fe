"""Template encryption at rest: AES-256-GCM under a keyring of named keys.

Every ciphertext is stored beside the id of the key that sealed it, so keys can be rotated
while the service runs: new templates are sealed under the active key, old rows still open
under the key they name until `Store.rotate_keys` re-seals them. The additional
authenticated data (AAD) binds a ciphertext to the row it belongs to, so a template copied
onto another customer's row does not decrypt.

Keyring file format (JSON, so it also fits on one line in `FACEGUARD_TEMPLATE_KEYS`)::

    {"active": "k2", "keys": {"k1": "<base64 of 32 bytes>", "k2": "<base64 of 32 bytes>"}}

Key ids are 1-64 characters of `A-Z a-z 0-9 . _ -`, starting with a letter or digit.
Old keys stay in the file until no row uses them.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from service.gallery.durable import fsync_dir

log = logging.getLogger(__name__)

ENV_VAR = "FACEGUARD_TEMPLATE_KEYS"
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
_KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_VECTOR_DTYPE = np.dtype("<f4")  # fixed byte order: a blob opens the same on any machine


class KeyringError(ValueError):
    """A keyring that cannot be loaded or used. Messages never contain key material."""


class UnknownKeyError(KeyringError):
    """A ciphertext names a key id that the keyring does not hold."""


class TamperedError(KeyringError):
    """A ciphertext failed authentication: altered, truncated, or moved to another row."""


class Keyring:
    """Named AES-256 keys, one of them active for new encryptions. Immutable and thread-safe."""

    __slots__ = ("_active", "_ciphers", "_keys")

    def __init__(self, keys: Mapping[str, bytes], active: str) -> None:
        for key_id, key in keys.items():
            _check_key_id(key_id)
            if len(key) != KEY_BYTES:
                raise KeyringError(f"key {key_id!r} is {len(key)} bytes, expected {KEY_BYTES}")
        if active not in keys:
            raise KeyringError(f"active key {active!r} is not in the keyring")
        self._keys = dict(keys)
        self._active = active
        self._ciphers = {key_id: AESGCM(key) for key_id, key in self._keys.items()}

    def __repr__(self) -> str:
        return f"Keyring(active={self._active!r}, key_ids={self.key_ids!r})"

    @property
    def active(self) -> str:
        """The id of the key that seals new ciphertexts."""
        return self._active

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._keys))

    def encrypt(self, plaintext: bytes, aad: bytes) -> tuple[str, bytes]:
        """Seal under the active key; returns (key id, nonce + ciphertext + tag).

        The nonce is random: at well under 2**32 encryptions per key (the GCM bound for random
        nonces) a gallery rotates keys long before a collision becomes plausible.
        """
        nonce = os.urandom(NONCE_BYTES)
        return self._active, nonce + self._ciphers[self._active].encrypt(nonce, plaintext, aad)

    def decrypt(self, key_id: str, blob: bytes, aad: bytes) -> bytes:
        """Open a blob sealed by `encrypt`; raises `UnknownKeyError` or `TamperedError`."""
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise UnknownKeyError(f"no key {key_id!r} in the keyring (known: {self.key_ids})")
        if len(blob) < NONCE_BYTES + TAG_BYTES:
            raise TamperedError(f"ciphertext under key {key_id!r} is truncated")
        try:
            return cipher.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
        except InvalidTag:
            raise TamperedError(
                f"ciphertext under key {key_id!r} failed authentication "
                "(altered, or not sealed for this row)"
            ) from None

    def add_key(self, key_id: str | None = None) -> Keyring:
        """A new keyring with a fresh random key made active; the old keys stay for reading."""
        new_id = key_id if key_id is not None else self._next_key_id()
        if new_id in self._keys:
            raise KeyringError(f"key {new_id!r} already exists")
        return Keyring({**self._keys, new_id: AESGCM.generate_key(bit_length=256)}, new_id)

    def _next_key_id(self) -> str:
        """`k<n+1>` after the highest `k<n>`: ids numbered in the order the keys were added."""
        numbers = [int(k[1:]) for k in self._keys if re.fullmatch(r"k\d+", k)]
        return f"k{max(numbers, default=0) + 1}"

    def to_json(self) -> str:
        keys = {k: base64.b64encode(v).decode("ascii") for k, v in sorted(self._keys.items())}
        return json.dumps({"active": self._active, "keys": keys}, indent=2) + "\n"

    def dump(self, path: Path) -> None:
        """Write the keyring file atomically (temp file, fsync, rename) with mode 0600.

        Atomic so that a crash mid-write never leaves a half file that would lock every
        template out; 0600 because anyone who reads it can decrypt the gallery.
        """
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
                os.fchmod(f.fileno(), 0o600)  # exactly 0600, whatever the umask
                f.write(self.to_json())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)

    @classmethod
    def from_json(cls, text: str, source: str = "keyring") -> Keyring:
        """Parse the JSON format above; `source` names where it came from in error messages."""
        try:
            document = json.loads(text)
        except json.JSONDecodeError as err:
            raise KeyringError(f"{source}: not valid JSON ({err.msg})") from None
        if not isinstance(document, dict) or set(document) != {"active", "keys"}:
            raise KeyringError(f'{source}: expected exactly {{"active": ..., "keys": {{...}}}}')
        active, encoded = document["active"], document["keys"]
        if not isinstance(active, str) or not isinstance(encoded, dict) or not encoded:
            raise KeyringError(f'{source}: "active" must be a key id and "keys" a non-empty map')
        keys = {key_id: _decode_key(source, key_id, value) for key_id, value in encoded.items()}
        return cls(keys, active)

    @classmethod
    def from_file(cls, path: Path) -> Keyring:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise KeyringError(f"cannot read key file {path}: {err.strerror}") from None
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("key file %s is accessible to group or others; chmod 600 it", path)
        return cls.from_json(text, source=str(path))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Keyring:
        environ = os.environ if environ is None else environ
        text = environ.get(ENV_VAR)
        if not text:
            raise KeyringError(f"{ENV_VAR} is not set")
        return cls.from_json(text, source=ENV_VAR)


def generate_keyring(key_id: str = "k1") -> Keyring:
    """A keyring with one fresh random key, for development only (the caller warns)."""
    return Keyring({key_id: AESGCM.generate_key(bit_length=256)}, key_id)


def load_keyring(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Keyring:
    """The keyring from `path` if given, else from `FACEGUARD_TEMPLATE_KEYS`."""
    return Keyring.from_file(path) if path is not None else Keyring.from_env(environ)


def seal_vector(keyring: Keyring, vector: np.ndarray, aad: bytes) -> tuple[str, bytes]:
    """Encrypt a 1-D finite float32 vector; returns (key id, blob)."""
    array = np.asarray(vector)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"a template vector must be 1-D and non-empty, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("a template vector must be finite")
    return keyring.encrypt(array.astype(_VECTOR_DTYPE).tobytes(), aad)


def open_vector(keyring: Keyring, key_id: str, blob: bytes, aad: bytes) -> np.ndarray:
    """Decrypt a blob from `seal_vector` back to a writable native float32 vector."""
    plaintext = keyring.decrypt(key_id, blob, aad)
    return np.frombuffer(plaintext, dtype=_VECTOR_DTYPE).astype(np.float32)


def _check_key_id(key_id: object) -> None:
    if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
        raise KeyringError(f"invalid key id {key_id!r}")


def _decode_key(source: str, key_id: str, encoded: object) -> bytes:
    if not isinstance(encoded, str):
        raise KeyringError(f"{source}: key {key_id!r} must be a base64 string")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise KeyringError(f"{source}: key {key_id!r} is not valid base64") from None
