"""A bank of real photographs for the scene generator's textures and backgrounds.

`PhotoBank(folder)` loads every JPEG/PNG under a folder once, at a working size (shortest side
`size` px), keeps them in memory as uint8 RGB (and in a per-process cache, so forked render workers
share them), and hands out random crops as float32 RGB in [0, 1]. Every draw comes from the caller's
numpy Generator, so a scene seed fixes which photo, where, how large and whether mirrored.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from percept_cli.errors import UsageError

SUFFIXES = (".jpg", ".jpeg", ".png")
_CACHE: dict[tuple[str, int], "PhotoBank"] = {}


class PhotoBank:
    """Photos at a working size; `crop(rng, h, w)` draws a random textured patch."""

    def __init__(self, images: list[np.ndarray], names: list[str] | None = None, size: int = 256):
        if not images:
            raise UsageError("the photo bank is empty: give a folder with JPEG or PNG photographs (--textures DIR)")
        self.size = int(size)
        self.images = [self._fit(np.asarray(im, np.uint8), self.size) for im in images]  # (H, W, 3) uint8 RGB each
        self.names = list(names) if names is not None else [f"photo-{i}" for i in range(len(images))]

    @staticmethod
    def _fit(img: np.ndarray, size: int) -> np.ndarray:
        """RGB uint8 with its shortest side at most `size` (area-downsampled)."""
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=-1)
        img = img[..., :3]
        s = size / min(img.shape[:2])
        if s < 1:
            img = cv2.resize(img, (max(8, round(img.shape[1] * s)), max(8, round(img.shape[0] * s))),
                             interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(img)

    @classmethod
    def from_folder(cls, folder: str | Path, size: int = 256) -> "PhotoBank":
        """Every JPEG/PNG under `folder` (recursively, sorted by path), read once per process."""
        folder = Path(folder).expanduser()
        key = (str(folder.resolve()), int(size))
        if key in _CACHE:
            return _CACHE[key]
        if not folder.is_dir():
            raise UsageError(f"--textures '{folder}' is not a folder; give a folder of JPEG/PNG photos "
                             "(scripts/get-photos.sh fetches some)")
        paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())
        images, names = [], []
        for p in paths:
            img = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if img is None or min(img.shape[:2]) < 16:
                continue
            images.append(cls._fit(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), size))
            names.append(str(p.relative_to(folder)))
        if not images:
            raise UsageError(f"--textures '{folder}' holds no readable JPEG/PNG photos")
        bank = cls(images, names, size)
        _CACHE[key] = bank
        return bank

    def __len__(self) -> int:
        return len(self.images)

    def crop(self, rng: np.random.Generator, h: int, w: int | None = None, zoom: tuple[float, float] = (0.3, 1.0),
             index: int | None = None) -> np.ndarray:
        """A random crop resized to (h, w), float32 RGB in [0, 1]: random photo, size (a `zoom` fraction of
        the photo's shorter side), position and left-right mirroring."""
        w = h if w is None else w
        img = self.images[int(rng.integers(len(self.images))) if index is None else index]
        ih, iw = img.shape[:2]
        frac = rng.uniform(*zoom)
        ch = max(4, min(ih, round(min(ih, iw * h / w) * frac)))  # crop of the target aspect inside the photo
        cw = max(4, min(iw, round(ch * w / h)))
        y0, x0 = int(rng.integers(0, ih - ch + 1)), int(rng.integers(0, iw - cw + 1))
        patch = img[y0:y0 + ch, x0:x0 + cw]
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        interp = cv2.INTER_AREA if ch > h else cv2.INTER_LINEAR
        out = cv2.resize(np.ascontiguousarray(patch), (w, h), interpolation=interp)
        return out.astype(np.float32) / 255.0  # (h, w, 3)
