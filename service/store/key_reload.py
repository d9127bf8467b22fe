"""The running service's template keyring kept in step with its key file.

`faceguard keys rotate` (service.cli.keys) adds a key to the file and makes it active; every
running service polls the file every `RELOAD_POLL_S` and swaps its store's keyring, so it
writes under the new key before the command re-encrypts the old rows. The store calls
`reload` at once when a row names a key it does not know yet (another replica wrote it).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from service.store.crypto import Keyring, KeyringError
from service.store.customers import Store

log = logging.getLogger(__name__)

RELOAD_POLL_S = 2.0


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
