"""Template key rotation without downtime: `faceguard keys rotate` and the service's reload.

Rotation, by the command:
1. add a fresh key to the key file and make it active (old keys stay, for reading);
2. wait `--wait` seconds, long enough for a running service to pick the file up (it polls
   the file every `RELOAD_POLL_S` and writes under the new key from then on);
3. re-encrypt every template not under the new key (`Store.rotate_keys`, in batches, each
   audited as a KEY_ROTATION event), and re-seal the vector index snapshot under it.

The service, meanwhile, keeps answering: `KeyringReloader` swaps the store's keyring when the
file changes, and the store calls it at once when a row names a key it does not know yet.
Rotation needs a key file (`storage.key_file`, or the development key in the data dir): a
keyring given in the environment cannot be rewritten from outside the process.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from pathlib import Path

from service.app.assembly import INDEX_FILE, KEYRING_FILE, open_store
from service.config import Settings, SettingsError
from service.gallery.crypto import Keyring, KeyringError, reseal
from service.gallery.index import SNAPSHOT_PURPOSE
from service.gallery.store import Store
from service.gallery.watchlist import rotate_watchlist_keys

log = logging.getLogger(__name__)

RELOAD_POLL_S = 2.0


def key_file_path(settings: Settings) -> Path | None:
    """The key file the service reads its keyring from, None when it comes from the
    environment (the same choice as `service.app.assembly.keyring_for`)."""
    storage = settings.storage
    path = storage.key_file or storage.data_dir / KEYRING_FILE
    return path if path.is_file() else None


def key_file_of(settings: Settings) -> Path:
    path = key_file_path(settings)
    if path is None:
        raise SettingsError("key rotation needs a key file (storage.key_file or the data dir's)")
    return path


class KeyringReloader:
    """Keeps a store's keyring in step with its key file."""

    def __init__(self, store: Store, path: Path) -> None:
        self.store = store
        self.path = path
        self._lock = threading.Lock()
        self._seen = self._stamp()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._problem: str | None = None

    def _stamp(self) -> tuple[int, int, int]:
        stat = self.path.stat()
        return stat.st_ino, stat.st_mtime_ns, stat.st_size

    def reload(self) -> None:
        """Re-read the file and use it (the store refuses a keyring that lost a key in use)."""
        with self._lock:
            self._seen = self._stamp()
            keyring = Keyring.from_file(self.path)
            if keyring.to_json() == self.store.keyring.to_json():
                return
            self.store.use_keyring(keyring)
        log.info("template keyring reloaded: active key %s", keyring.active)

    def poll(self) -> None:
        try:
            if self._stamp() != self._seen:
                self.reload()
            self._problem = None
        except (OSError, KeyringError) as exc:
            if str(exc) != self._problem:  # once per problem, not every poll
                log.error("template key file unusable, keeping the current keys: %s", exc)
            self._problem = str(exc)

    def start(self, interval: float = RELOAD_POLL_S) -> None:
        self.store.on_unknown_key(self.reload)

        def loop() -> None:
            while not self._stop.wait(interval):
                self.poll()

        self._thread = threading.Thread(target=loop, name="keyring-reload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


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
    try:
        resealed = reseal(settings.storage.data_dir / INDEX_FILE, keyring, SNAPSHOT_PURPOSE)
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
