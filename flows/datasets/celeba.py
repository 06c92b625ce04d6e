"""CelebA (aligned faces) with the Real NVP crop and resize, streamed to disk without holding all images.

Source: Liu, Luo, Wang, Tang, 2015, "Deep Learning Face Attributes in the Wild" (CelebA); files from Google
Drive (ids as torchvision and tensorflow-datasets use; a large file answers first with a confirmation page,
which the downloader follows). Protocol: Real NVP (Dinh, Sohl-Dickstein, Bengio, 2016, arXiv:1605.08803):
crop rows 40..187 and columns 15..162 of the 218 x 178 aligned image (148 x 148), then bilinear resize to
64 x 64 (``celeba``) or 32 x 32 (``celeba32``) the way TF1's ``tf.image.resize_images`` did it
(align_corners=False, no half-pixel offset: source = destination * 148 / size), rounded to uint8.
Splits: the official ``list_eval_partition.txt`` (0 / 1 / 2 = train / valid / test = 162,770 / 19,867 / 19,962).
The random horizontal flip of Real NVP is a training-time augmentation, not applied here.
Each split is written row by row into a memory-mapped ``.npy`` (``numpy.lib.format.open_memmap``).
"""

from __future__ import annotations

from ..errors import DataError

import io
import zipfile
from pathlib import Path

import numpy as np

from . import downloader as dl
from ._core import DatasetSpec, register_dataset, sha256_file

__all__ = ["crop_resize", "FILES", "PARTITION_SIZES"]

_DRIVE = "https://drive.google.com/uc?export=download&id="
FILES = {
    "img_align_celeba.zip": {"id": "0B7EVK8r0v71pZjFTYXZWM3FlRnM", "md5": "00d2c5bc6d35e252742224ab0c1e8fcb",
                             "size": 1443490838},
    "list_eval_partition.txt": {"id": "0B7EVK8r0v71pY0NSMzRuSXJEVkk", "md5": "d32c9cbf5e040fd4025c592c306e6668"},
}
PARTITION_SIZES = (162770, 19867, 19962)
CROP = (slice(40, 188), slice(15, 163))


def _bilinear_tf1(img: np.ndarray, size: int) -> np.ndarray:
    """TF1 ``resize_images`` bilinear (align_corners=False, legacy sampling) of an [h, w, c] image, float64."""
    h, w = img.shape[:2]
    ys, xs = np.arange(size) * (h / size), np.arange(size) * (w / size)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    a = img.astype(np.float64)
    top = a[y0][:, x0] * (1 - fx) + a[y0][:, x1] * fx
    bottom = a[y1][:, x0] * (1 - fx) + a[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def crop_resize(img: np.ndarray, size: int = 64) -> np.ndarray:
    """The Real NVP crop (rows 40..187, columns 15..162) then bilinear resize to ``size``; uint8 [size, size, 3]."""
    if img.shape[:2] != (218, 178):
        raise DataError(f"CelebA aligned images are 218 x 178; got {list(img.shape[:2])}")
    out = _bilinear_tf1(img[CROP], size)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _fetch(raw_dir: Path, mirror, params) -> dict:
    files = {}
    for name, info in FILES.items():
        path = dl.fetch(name, raw_dir, [_DRIVE + info["id"]], mirror=mirror, md5=info["md5"], size=info.get("size"),
                        quiet=not params["progress"],
                        how_to=f"download {name} from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html into a "
                               f"directory and pass it as mirror= (or set {dl.MIRROR_ENV})")
        files[name] = {"bytes": path.stat().st_size, "md5": info["md5"], "sha256": sha256_file(path)}
    return {"source": "CelebA (Google Drive)", "files": files}


def _read_partition(path: Path) -> dict[int, list[str]]:
    parts = {0: [], 1: [], 2: []}
    for line in Path(path).read_text().split("\n"):
        if line.strip():
            name, part = line.split()
            parts[int(part)].append(name)
    return parts


def _build(size):
    def build(raw_dir: Path, params, seed, work_dir: Path) -> dict:
        from PIL import Image

        raw_dir = Path(raw_dir)
        parts = _read_partition(raw_dir / "list_eval_partition.txt")
        limit = params["max_images"]
        out, counts = {}, {}
        with zipfile.ZipFile(raw_dir / "img_align_celeba.zip") as zf:
            index = {Path(n).name: n for n in zf.namelist() if n.endswith(".jpg")}
            for split, part in (("train", 0), ("val", 1), ("test", 2)):
                names = parts[part][:limit] if limit > 0 else parts[part]
                missing = [n for n in names if n not in index]
                if missing:
                    raise DataError(f"img_align_celeba.zip lacks {len(missing)} images of the partition, e.g. {missing[0]}")
                path = Path(work_dir) / f"{split}.npy"
                arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(len(names), size, size, 3))
                for i, name in enumerate(names):
                    with zf.open(index[name]) as f:
                        img = np.asarray(Image.open(io.BytesIO(f.read())).convert("RGB"))
                    arr[i] = crop_resize(img, size)
                arr.flush()
                del arr
                out[split], counts[split] = path, len(names)
        full = tuple(len(parts[p]) for p in (0, 1, 2))
        return {**out, "notes": {"partition_sizes": list(full), "official_partition_sizes": list(PARTITION_SIZES),
                                 "images_written": counts, "crop": "rows 40..187, cols 15..162",
                                 "resize": f"TF1 bilinear to {size}x{size}, rounded to uint8",
                                 "units": "pixel levels 0..255; bits/dim use log2(256) = 8"}}

    return build


for _name, _size in (("celeba", 64), ("celeba32", 32)):
    register_dataset(DatasetSpec(
        name=_name, kind="image", event_shape=(_size, _size, 3), offline=False, levels=256,
        defaults={"max_images": 0, "progress": True}, fetch=_fetch, build=_build(_size), streaming=True,
        description=f"CelebA aligned, Real NVP crop, {_size}x{_size}", units="pixel levels 0..255"))
