"""Template encryption: AES-GCM keyring, key files, rotation keys and vector sealing."""

from __future__ import annotations

import base64
import json
import logging
import os
import stat

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.store.crypto import (
    ENV_VAR,
    Keyring,
    KeyringError,
    TamperedError,
    UnknownKeyError,
    generate_keyring,
    load_keyring,
    open_vector,
    seal_vector,
)

AAD = b"customer-1/template-7"
KEYRING = generate_keyring()


@settings(max_examples=50, deadline=None)
@given(plaintext=st.binary(max_size=4096), aad=st.binary(max_size=256))
def test_encrypt_decrypt_roundtrip(plaintext: bytes, aad: bytes) -> None:
    key_id, blob = KEYRING.encrypt(plaintext, aad)
    assert key_id == KEYRING.active
    assert KEYRING.decrypt(key_id, blob, aad) == plaintext


def test_each_encryption_uses_a_fresh_nonce() -> None:
    _, first = KEYRING.encrypt(b"same", AAD)
    _, second = KEYRING.encrypt(b"same", AAD)
    assert first[:12] != second[:12] and first != second


def test_wrong_aad_is_rejected() -> None:
    key_id, blob = KEYRING.encrypt(b"template", AAD)
    with pytest.raises(TamperedError):
        KEYRING.decrypt(key_id, blob, b"customer-2/template-7")


@pytest.mark.parametrize("position", [0, 11, 12, -17, -1])  # nonce, ciphertext, tag
def test_tampered_blob_is_rejected(position: int) -> None:
    key_id, blob = KEYRING.encrypt(b"a template of some length", AAD)
    flipped = bytearray(blob)
    flipped[position] ^= 0x01
    with pytest.raises(TamperedError):
        KEYRING.decrypt(key_id, bytes(flipped), AAD)


def test_truncated_blob_is_rejected() -> None:
    key_id, blob = KEYRING.encrypt(b"", AAD)
    with pytest.raises(TamperedError, match="truncated"):
        KEYRING.decrypt(key_id, blob[:-1], AAD)


def test_unknown_key_id_is_rejected() -> None:
    _, blob = KEYRING.encrypt(b"template", AAD)
    with pytest.raises(UnknownKeyError, match="'nope'"):
        KEYRING.decrypt("nope", blob, AAD)


def test_a_blob_does_not_open_under_another_key() -> None:
    other = Keyring({"k1": os.urandom(32)}, "k1")
    key_id, blob = KEYRING.encrypt(b"template", AAD)
    with pytest.raises(TamperedError):
        other.decrypt(key_id, blob, AAD)


def test_add_key_makes_a_new_active_key_and_keeps_the_old() -> None:
    key_id, blob = KEYRING.encrypt(b"old", AAD)
    rotated = KEYRING.add_key()
    assert rotated.active == "k2" and rotated.key_ids == ("k1", "k2")
    assert KEYRING.active == "k1"  # the original keyring is unchanged
    assert rotated.decrypt(key_id, blob, AAD) == b"old"
    new_id, new_blob = rotated.encrypt(b"new", AAD)
    assert new_id == "k2"
    with pytest.raises(UnknownKeyError):
        KEYRING.decrypt(new_id, new_blob, AAD)
    assert rotated.add_key("2025-q3").active == "2025-q3"
    with pytest.raises(KeyringError, match="already exists"):
        rotated.add_key("k1")


def test_keyring_file_roundtrip_is_private_and_atomic(tmp_path) -> None:
    path = tmp_path / "template-keys.json"
    rotated = KEYRING.add_key()
    rotated.dump(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = Keyring.from_file(path)
    assert (loaded.active, loaded.key_ids) == ("k2", ("k1", "k2"))
    key_id, blob = rotated.encrypt(b"template", AAD)
    assert loaded.decrypt(key_id, blob, AAD) == b"template"

    path.chmod(0o644)
    rotated.add_key().dump(path)  # replacing an existing file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Keyring.from_file(path).active == "k3"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind


def test_key_file_format_is_documented_json(tmp_path) -> None:
    document = json.loads(KEYRING.to_json())
    assert document["active"] == "k1"
    assert len(base64.b64decode(document["keys"]["k1"])) == 32


def test_readable_key_file_is_loaded_with_a_warning(tmp_path, caplog) -> None:
    path = tmp_path / "keys.json"
    path.write_text(KEYRING.to_json())
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="service.store.crypto"):
        assert Keyring.from_file(path).active == "k1"
    assert "chmod 600" in caplog.text


def test_keyring_from_env_and_load_precedence(tmp_path) -> None:
    environ = {ENV_VAR: json.dumps(json.loads(KEYRING.to_json()))}  # one line
    assert Keyring.from_env(environ).active == "k1"
    assert load_keyring(None, environ).key_ids == ("k1",)
    path = tmp_path / "keys.json"
    KEYRING.add_key().dump(path)
    assert load_keyring(path, environ).active == "k2"  # an explicit file wins


def test_missing_key_sources_raise_keyring_error(tmp_path) -> None:
    with pytest.raises(KeyringError, match="cannot read key file"):
        Keyring.from_file(tmp_path / "absent.json")
    with pytest.raises(KeyringError, match=ENV_VAR):
        load_keyring(None, {})


ZERO_KEY = base64.b64encode(bytes(32)).decode()


def _doc(active: object = "k1", **keys: object) -> str:
    return json.dumps({"active": active, "keys": keys or {"k1": ZERO_KEY}})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["k1"]', "expected exactly"),
        (json.dumps({"active": "k1", "keys": {}, "extra": 1}), "expected exactly"),
        (_doc(k1="!!!not base64!!!"), "not valid base64"),
        (_doc(k1=base64.b64encode(bytes(16)).decode()), "16 bytes"),
        (_doc(k1=123), "base64 string"),
        (_doc(active="k9"), "active key 'k9'"),
        (_doc(active=None), '"active" must be'),
        (_doc(active="bad id", **{"bad id": ZERO_KEY}), "invalid key id"),
    ],
)
def test_invalid_keyrings_are_rejected(text: str, message: str) -> None:
    with pytest.raises(KeyringError, match=message):
        Keyring.from_json(text)


def test_key_material_never_appears_in_repr_or_errors() -> None:
    key = base64.b64encode(bytes(range(16))).decode()
    with pytest.raises(KeyringError) as caught:
        Keyring.from_json(_doc(k1=key))
    assert key not in str(caught.value)
    assert base64.b64decode(json.loads(KEYRING.to_json())["keys"]["k1"]).hex() not in repr(KEYRING)


def test_seal_and_open_vector() -> None:
    vector = np.random.default_rng(0).normal(size=512).astype(np.float32)
    key_id, blob = seal_vector(KEYRING, vector, AAD)
    assert vector.tobytes() not in blob
    opened = open_vector(KEYRING, key_id, blob, AAD)
    assert opened.dtype == np.float32 and opened.flags.writeable
    np.testing.assert_array_equal(opened, vector)
    with pytest.raises(TamperedError):
        open_vector(KEYRING, key_id, blob, b"another row")


@pytest.mark.parametrize(
    "vector", [np.zeros((2, 4), np.float32), np.zeros(0, np.float32), np.array([1.0, np.nan])]
)
def test_seal_vector_rejects_malformed_vectors(vector: np.ndarray) -> None:
    with pytest.raises(ValueError):
        seal_vector(KEYRING, vector, AAD)
