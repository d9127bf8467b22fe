"""Template key rotation without downtime: `faceguard keys rotate`.

Rotation, by the command:
1. add a fresh key to the key file and make it active (old keys stay, for reading);
2. wait `--wait` seconds, long enough for a running service to pick the file up (it polls
   the file every `RELOAD_POLL_S` and writes under the new key from then on);
3. re-encrypt every template not under the new key (`Store.rotate_keys`, in batches, each
   audited as a KEY_ROTATION event), and re-seal the vector index snapshot under it.

The service, meanwhile, keeps answering: `KeyringReloader` (service.store.key_reload) swaps
the store's keyring when the file changes, and the store calls it at once when a row names a
key it does not know yet.
Rotation needs a key file (`storage.key_file`, or the development key in the data dir): a
keyring given in the environment cannot be rewritten from outside the process.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from service.app.assembly import key_file_path, open_store
from service.config import Settings, SettingsError
from service.gallery.faiss_index import SNAPSHOT_PURPOSE
from service.store.crypto import Keyring, reseal
from service.store.watchlist import rotate_watchlist_keys

log = logging.getLogger(__name__)


def key_file_of(settings: Settings) -> Path:
    path = key_file_path(settings)
    if path is None:
        raise SettingsError("key rotation needs a key file (storage.key_file or the data dir's)")
    return path


def rotate(settings: Settings, wait_s: float) -> dict[str, object]:
    """Add a key, let running services see it, re-encrypt; returns what was done."""
    path = key_file_of(settings)
    keyring = Keyring.from_file(path).add_key()
    keyring.dump(path)
    log.info("added key %s to %s; services reload it within %.0f s", keyring.active, path, wait_s)
    time.sleep(wait_s)
    with open_store(settings) as store:
        count = store.rotate_keys(keyring)
        # Rows a service wrote under the old key before it saw the new file.
        count += store.rotate_keys(keyring)
        count += rotate_watchlist_keys(store)
    index_file = settings.gallery.faiss.snapshot_path(settings.storage.data_dir)
    try:
        resealed = reseal(index_file, keyring, SNAPSHOT_PURPOSE)
    except FileNotFoundError:  # none yet, or removed by an erasure: the service writes one
        resealed = False
    return {
        "active_key": keyring.active, "reencrypted": count, "key_file": str(path),
        "snapshot_resealed": resealed,
    }  # fmt: skip


def run_keys_rotate(settings: Settings, wait_s: float) -> int:
    result = rotate(settings, wait_s)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0
