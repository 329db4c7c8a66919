"""The benchmark's synthetic photos and its module: sizes from 200x150 to 2592x1944, mostly JPEG."""

import io
import json
import os

import numpy as np
from absl import app, logging
from PIL import Image

from retrain_suite.bottleneck import make_module

PHOTO_SIZES = ((200, 150), (333, 250), (640, 480), (1024, 768), (1600, 1200), (2592, 1944))


CLASS_STYLES = (((200, 60, 50), "solid"), ((50, 170, 70), "stripes"), ((60, 80, 200), "checker"))


def photo_pixels(size, style, rng):
    """uint8 [h, w, 3]: a smooth colour field with a class pattern and sensor-like noise."""
    width, height = size
    colour, pattern = style
    small_h, small_w = max(height // 8, 4), max(width // 8, 4)
    y, x = np.mgrid[0:small_h, 0:small_w]
    if pattern == "stripes":
        mask = (x // 2) % 2 == 0
    elif pattern == "checker":
        mask = ((x // 3) + (y // 3)) % 2 == 0
    else:
        mask = np.ones((small_h, small_w), bool)
    shade = 0.6 + 0.4 * rng.rand() * (x + y) / (small_h + small_w)
    base = np.where(mask[..., None], np.array(colour), np.array(colour) // 3) * shade[..., None]
    base = np.clip(base + rng.randint(-25, 26, base.shape), 0, 255).astype(np.uint8)
    image = np.asarray(Image.fromarray(base).resize((width, height), Image.BILINEAR))
    noise = rng.randint(-6, 7, (height, width, 1))
    return np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def encode(pixels, fmt):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def write_photos(folder, count, seed=0, distinct=None):
    """Write `count` photos in class subfolders (3 classes); -> sorted paths.

    Sizes cycle through PHOTO_SIZES; one in eight is a PNG. With distinct=k,
    only k photos are drawn and the rest are byte-wise variants of them
    (unique bytes after the end of the image, which decoders ignore): a
    different file and cache entry each, quick to write by the thousand.
    """
    rng = np.random.RandomState(seed)
    distinct = count if distinct is None else min(distinct, count)
    drawn = []
    for i in range(distinct):
        fmt = "PNG" if i % 8 == 7 else "JPEG"
        style = CLASS_STYLES[i % len(CLASS_STYLES)]
        size = PHOTO_SIZES[(i // len(CLASS_STYLES)) % len(PHOTO_SIZES)]
        drawn.append((encode(photo_pixels(size, style, rng), fmt), fmt))
    paths = []
    for i in range(count):
        data, fmt = drawn[i % distinct]
        if i >= distinct:
            data += b"\0variant %d" % i
        label = f"class{(i % distinct) % len(CLASS_STYLES)}"
        path = os.path.join(folder, label, f"photo{i:05d}.{'png' if fmt == 'PNG' else 'jpg'}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        paths.append(path)
    with open(os.path.join(folder, MANIFEST), "w", encoding="utf-8") as f:
        json.dump({"count": count, "seed": seed, "distinct": distinct,
                   "sizes": {p: os.path.getsize(p) for p in paths}}, f)
    return sorted(paths)


# Written by write_photos once every photo is: what written_photos reuses.
MANIFEST = "written.json"


def clear_written(folder):
    """Remove the photos an earlier write_photos listed in folder's manifest, and the
    manifest; raise RuntimeError when anything else is left there (files the benchmark
    did not write are never removed)."""
    manifest = os.path.join(folder, MANIFEST)
    listed = {}
    if os.path.isfile(manifest):  # nor a FIFO, which open() would wait on
        try:
            with open(manifest, encoding="utf-8") as f:
                listed = json.load(f).get("sizes", {})
        except (OSError, ValueError, AttributeError):
            listed = {}
    for path in listed:
        if os.path.dirname(os.path.dirname(path)) == folder and os.path.isfile(path):
            os.remove(path)
    if os.path.isfile(manifest):
        os.remove(manifest)
    left = [os.path.join(root, name) for root, _, names in os.walk(folder) for name in names]
    if left:
        raise RuntimeError(
            f"{folder} holds {len(left)} files the benchmark did not write (such as "
            f"{left[0]}); they are left alone: give another --work_dir.")


def written_photos(folder, count, seed=0, distinct=None):
    """The sorted paths of write_photos(folder, count, seed, distinct) when an earlier
    call wrote them there, each file still has its size and the folder holds no other
    file; else None."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):  # nor a FIFO, which open() would wait on
        return None
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict):
        return None
    distinct = count if distinct is None else min(distinct, count)
    sizes = manifest.get("sizes")
    if not isinstance(sizes, dict):
        return None
    if (manifest.get("count"), manifest.get("seed"), manifest.get("distinct")) != (
            count, seed, distinct) or len(sizes) != count:
        return None
    for path, size in sizes.items():
        if not os.path.isfile(path) or os.path.getsize(path) != size:
            return None
    # Nothing else in the folder: photos of a larger count written before would be
    # trained on too.
    found = {os.path.join(root, name) for root, _, names in os.walk(folder) for name in names}
    if found - {os.path.join(folder, MANIFEST)} != set(sizes):
        return None
    return sorted(sizes)


def module_path(kind_or_path, work_dir):
    if kind_or_path in make_module.KINDS:
        path = os.path.join(work_dir, "modules", kind_or_path)
        if not os.path.isdir(path):
            logging.info("Writing the random-weight %s module...", kind_or_path)
            make_module.write_module(kind_or_path, path)
        return path
    if not os.path.isdir(kind_or_path):
        raise app.UsageError(
            f"--module {kind_or_path} is neither {' nor '.join(make_module.KINDS)} nor a folder."
        )
    return kind_or_path
