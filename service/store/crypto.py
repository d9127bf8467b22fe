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

Files that hold templates (the vector index snapshot) are sealed too, as a stream of AES-GCM
chunks (`SealedWriter`, `open_sealed`): a header naming the key, then chunks of at most 4 MiB
whose AAD carries the file's purpose, the chunk's position and whether it is the last, so a
chunk cannot be moved, dropped or replayed from another file, and a truncated file is refused.
Chunks keep memory flat for a gallery's snapshot of hundreds of megabytes.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import stat
import struct
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from service.store.durable import fsync_dir

log = logging.getLogger(__name__)

ENV_VAR = "FACEGUARD_TEMPLATE_KEYS"
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
_KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_VECTOR_DTYPE = np.dtype("<f4")  # fixed byte order: a blob opens the same on any machine
SEALED_MAGIC = b"FGSEALED1\n"
_SEAL_CHUNK = 1 << 22
_CHUNK_HEADER = struct.Struct(">?I")  # last chunk?, sealed length


class KeyringError(ValueError):
    """A keyring that cannot be loaded or used. Messages never contain key material."""


class UnknownKeyError(KeyringError):
    """A ciphertext names a key id that the keyring does not hold."""


class TamperedError(KeyringError):
    """A ciphertext failed authentication: altered, truncated, or moved to another row."""


class SealedFileError(KeyringError):
    """A sealed file is not one (an old plaintext file), or is truncated or altered."""


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

    def derive(self, key_id: str, purpose: bytes, length: int = KEY_BYTES) -> bytes:
        """A subkey of key `key_id` for one `purpose` (HKDF-SHA256), so a use outside AES-GCM
        (the seed of the Milvus vectors' rotation) never handles the key itself."""
        key = self._keys.get(key_id)
        if key is None:
            raise UnknownKeyError(f"no key {key_id!r} in the keyring (known: {self.key_ids})")
        return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=purpose).derive(key)

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


class SealedWriter:
    """A write-only file object that seals what is written to `file` in AES-GCM chunks under
    the keyring's active key; `close` seals the last chunk and must be called."""

    def __init__(self, file: BinaryIO, keyring: Keyring, purpose: bytes) -> None:
        self._file, self._keyring, self._purpose = file, keyring, purpose
        self._key_id = keyring.active.encode("ascii")
        self._buffer = bytearray()
        self._position = 0
        file.write(SEALED_MAGIC + bytes([len(self._key_id)]) + self._key_id)

    def write(self, data: bytes) -> int:
        self._buffer += data
        while len(self._buffer) > _SEAL_CHUNK:
            self._seal(bytes(self._buffer[:_SEAL_CHUNK]), last=False)
            del self._buffer[:_SEAL_CHUNK]
        return len(data)

    def close(self) -> None:
        self._seal(bytes(self._buffer), last=True)
        self._buffer.clear()

    def _seal(self, plaintext: bytes, last: bool) -> None:
        aad = _chunk_aad(self._purpose, self._key_id, self._position, last)
        _, blob = self._keyring.encrypt(plaintext, aad)
        self._file.write(_CHUNK_HEADER.pack(last, len(blob)) + blob)
        self._position += 1


def sealed_key_id(file: BinaryIO) -> str:
    """The id of the key a sealed file names; `SealedFileError` for anything else."""
    if file.read(len(SEALED_MAGIC)) != SEALED_MAGIC:
        raise SealedFileError("not a sealed file (an unencrypted or foreign file)")
    size = file.read(1)
    key_id = file.read(size[0]) if size else b""
    if not size or len(key_id) != size[0]:
        raise SealedFileError("sealed file header is truncated")
    try:
        text = key_id.decode("ascii")
        _check_key_id(text)
    except (UnicodeDecodeError, KeyringError):
        raise SealedFileError("sealed file names an invalid key id") from None
    return text


def open_sealed(file: BinaryIO, keyring: Keyring, purpose: bytes) -> Iterator[bytes]:
    """The plaintext chunks of a file `SealedWriter` wrote, each authenticated before it is
    yielded; raises `SealedFileError` (or `UnknownKeyError`) on any damage or truncation."""
    key_id = sealed_key_id(file)
    position = 0
    while True:
        header = file.read(_CHUNK_HEADER.size)
        if len(header) != _CHUNK_HEADER.size:
            raise SealedFileError("sealed file is truncated (no last chunk)")
        last, length = _CHUNK_HEADER.unpack(header)
        if length > _SEAL_CHUNK + NONCE_BYTES + TAG_BYTES:
            raise SealedFileError("sealed file has an oversized chunk")
        blob = file.read(length)
        aad = _chunk_aad(purpose, key_id.encode("ascii"), position, last)
        try:
            yield keyring.decrypt(key_id, blob, aad)
        except TamperedError:
            raise SealedFileError(f"sealed file chunk {position} fails authentication") from None
        if last:
            if file.read(1):
                raise SealedFileError("sealed file has bytes after its last chunk")
            return
        position += 1


def write_sealed(
    path: Path, keyring: Keyring, purpose: bytes, write: Callable[[SealedWriter], None]
) -> None:
    """Write a sealed file atomically under the keyring's active key: `write` fills a temp
    file (mode 0600) in the same directory, which is fsynced and renamed over `path`, so a
    crash leaves the old file or the new one, never a partial one."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            writer = SealedWriter(out, keyring, purpose)
            write(writer)
            writer.close()
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def reseal(path: Path, keyring: Keyring, purpose: bytes) -> bool:
    """Re-seal a sealed file under the keyring's active key (atomically, mode 0600); False when
    it already is. Used by key rotation, so no file stays readable only with a retired key."""
    with path.open("rb") as file:
        if sealed_key_id(file) == keyring.active:
            return False
        file.seek(0)

        def copy(writer: SealedWriter) -> None:
            for chunk in open_sealed(file, keyring, purpose):
                writer.write(chunk)

        write_sealed(path, keyring, purpose, copy)
    return True


def _chunk_aad(purpose: bytes, key_id: bytes, position: int, last: bool) -> bytes:
    return SEALED_MAGIC + purpose + b"\0" + key_id + struct.pack(">Q?", position, last)
