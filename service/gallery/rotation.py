"""A secret orthogonal rotation of template vectors, for vector stores outside the service's keys.

Milvus holds its vectors in plaintext (in its segments, its write-ahead log and its object
storage), and needs them in the clear to search them. The service therefore never hands it a raw
template: every vector added and every probe is multiplied by an orthogonal matrix Q drawn from a
seed derived (HKDF) from one key of the template keyring. Q preserves inner products,
(Qx)·(Qy) = x·y, so cosine scores and every index type built on them (HNSW, IVF, PQ) behave
exactly as on the raw vectors.

What it protects against: someone who reads Milvus's data (its files, backups, a dump of the
collection, a Milvus account) but not the keyring cannot feed the vectors to the embedding
model's inverse or match them against templates or face images from elsewhere (another bank's
gallery, a leaked dump, photos embedded with the same public model): those live in the raw
space, and a random rotation in d dimensions hides which direction is which.

What it does NOT protect against (a rotation is not encryption):
- Pairs: anyone holding about d raw vectors and their rotated images (for instance an attacker
  who enrolled d faces of their own and can read Milvus) can solve for Q and undo it for every
  vector. Keep the rotated vectors' store as private as the templates' database.
- Geometry: distances between stored vectors are preserved by design, so the collection still
  reveals which templates are near each other (the same person enrolled twice, clusters), and a
  probe that reaches Milvus's search API learns scores as usual.
- The key: the rotation is only as secret as the keyring key it is derived from.
The exact scores the service decides on never come from Milvus: candidates are re-scored against
the AES-GCM-sealed templates in the store (`service.gallery.rescore`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.store.crypto import Keyring

SEED_PURPOSE = b"faceguard vector rotation seed v1"
# A short public fingerprint of the rotation, stored beside the vectors, so a keyring whose key
# of the same id differs is refused instead of searching in a different space.
CHECK_PURPOSE = b"faceguard vector rotation check v1"


@dataclass(frozen=True)
class Rotation:
    """Q (d x d, orthogonal, float32) derived from keyring key `key_id`."""

    key_id: str
    check: str
    matrix: np.ndarray

    @classmethod
    def from_keyring(cls, keyring: Keyring, key_id: str, dim: int) -> Rotation:
        """Q from the QR decomposition of a Gaussian matrix seeded by HKDF(key, purpose, d).

        The signs of R's diagonal are folded into Q so that Q is uniformly distributed over
        the orthogonal group (Haar), not biased by the QR routine's sign convention.
        """
        if dim <= 0:
            raise ValueError("dim must be positive")
        purpose = SEED_PURPOSE + b" d=" + str(dim).encode()
        seed = int.from_bytes(keyring.derive(key_id, purpose), "big")
        gaussian = np.random.default_rng(seed).standard_normal((dim, dim))
        q, r = np.linalg.qr(gaussian)
        q *= np.sign(np.diag(r))
        check = keyring.derive(key_id, CHECK_PURPOSE + b" d=" + str(dim).encode(), 8).hex()
        matrix = np.ascontiguousarray(q, dtype=np.float32)
        matrix.flags.writeable = False
        return cls(key_id, check, matrix)

    @property
    def dim(self) -> int:
        return self.matrix.shape[0]

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """Rotate row vectors, (n, d) -> (n, d) float32: each row x becomes Q x."""
        return np.ascontiguousarray(np.asarray(vectors, np.float32) @ self.matrix.T)
