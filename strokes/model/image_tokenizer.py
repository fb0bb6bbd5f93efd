"""The image tokenizer: a k-means codebook of 8x8 RGB patches, 64 codes per 64x64 image.

On ShapeWorld's 4-px grid only a few hundred distinct patches exist, so a codebook fitted on the
distinct patches of a few thousand random scenes holds each of them exactly and the tokenizer is
lossless; that keeps the tokenizer from confounding what the model learns (see
`shared/notes/prototype-findings.md`). Encoding looks a patch up by its bytes and falls back to the
nearest code for patches never seen in fitting.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from ..shapeworld import COLORS, SHAPES, Obj, Scene, render
from ..shapeworld.scene import free_slots

FILE = "image_tokenizer.npz"


class ImageTokenizer:
    def __init__(self, codebook: np.ndarray, patch: int = 8, size: int = 64) -> None:
        self.codebook = np.asarray(codebook, dtype=np.uint8)  # (K, patch*patch*3)
        self.patch = patch
        self.size = size
        self._index = {row.tobytes(): k for k, row in enumerate(self.codebook)}
        self._float = self.codebook.astype(np.float32)

    @property
    def num_codes(self) -> int:
        return len(self.codebook)

    @property
    def codes_per_image(self) -> int:
        return (self.size // self.patch) ** 2

    def _patches(self, image: np.ndarray) -> np.ndarray:
        g, p = self.size // self.patch, self.patch
        img = np.ascontiguousarray(np.asarray(image, dtype=np.uint8)[..., :3])
        return img.reshape(g, p, g, p, 3).transpose(0, 2, 1, 3, 4).reshape(g * g, p * p * 3)

    def encode(self, image: np.ndarray) -> list[int]:
        """64 codes, row-major over the 8x8 patch grid."""
        patches = self._patches(image)
        codes = []
        for row in patches:
            k = self._index.get(row.tobytes())
            if k is None:
                k = int(((self._float - row.astype(np.float32)) ** 2).sum(1).argmin())
            codes.append(k)
        return codes

    def decode(self, codes: list[int] | np.ndarray) -> np.ndarray:
        g, p = self.size // self.patch, self.patch
        codes = np.clip(np.asarray(codes, dtype=np.int64), 0, self.num_codes - 1)
        patches = self.codebook[codes].reshape(g, g, p, p, 3)
        return patches.transpose(0, 2, 1, 3, 4).reshape(self.size, self.size, 3)

    @classmethod
    def fit(cls, images: list[np.ndarray], num_codes: int = 256, patch: int = 8, seed: int = 0) -> "ImageTokenizer":
        """k-means (k-means++ init) over the distinct patches, weighted by how often each occurs."""
        from sklearn.cluster import KMeans

        size = images[0].shape[0]
        tmp = cls(np.zeros((1, patch * patch * 3), np.uint8), patch, size)
        allp = np.concatenate([tmp._patches(im) for im in images])
        # Unique rows via a bytes view: the same rows, order and counts as np.unique(axis=0), ~300x faster.
        rows = np.ascontiguousarray(allp).view(np.dtype((np.void, allp.shape[1]))).ravel()
        uniq, counts = np.unique(rows, return_counts=True)
        uniq = uniq.view(np.uint8).reshape(-1, allp.shape[1])
        k = min(num_codes, len(uniq))
        if k == len(uniq):
            # Every distinct patch gets its own code: k-means with k = n points is the identity.
            order = np.argsort(-counts, kind="stable")
            return cls(uniq[order], patch, size)
        km = KMeans(n_clusters=k, n_init=1, random_state=seed, max_iter=50)
        km.fit(uniq.astype(np.float32), sample_weight=counts)
        return cls(np.clip(np.rint(km.cluster_centers_), 0, 255).astype(np.uint8), patch, size)

    def save(self, folder: str | Path) -> None:
        np.savez_compressed(Path(folder) / FILE, codebook=self.codebook,
                            meta=json.dumps({"patch": self.patch, "size": self.size}))

    @classmethod
    def load(cls, folder: str | Path) -> "ImageTokenizer":
        with np.load(Path(folder) / FILE) as z:
            meta = json.loads(str(z["meta"]))
            return cls(z["codebook"], meta["patch"], meta["size"])


def fitting_images(n: int = 3000, size: int = 64, seed: int = 0) -> list[np.ndarray]:
    """Random 1-5 object ShapeWorld scenes: every shape, colour and grid offset occurs."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        scene = Scene(size=size)
        for _ in range(rng.randint(1, 5)):
            slots = free_slots(scene)
            if not slots:
                break
            scene = scene.with_object(Obj(rng.choice(SHAPES), rng.choice(list(COLORS)), *rng.choice(slots)))
        out.append(render(scene))
    return out
