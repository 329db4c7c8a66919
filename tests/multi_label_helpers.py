"""Generated multi-label photos: a grey background with two or three marks (coloured
patterns, one per label) in different quadrants, filed in every folder of their labels
(byte-identical copies) or listed in a labels CSV."""

import os

import numpy as np
from helpers import synthetic_image, write_image

# One mark per label: what a random-feature module tells apart.
MARK_STYLES = {
    "blue": ((40, 60, 210), "checker"),
    "green": ((40, 190, 60), "stripes"),
    "red": ((220, 40, 40), "solid"),
    "yellow": ((230, 210, 40), "stripes"),
}


def marked_image(labels, rng, size=48):
    """uint8 [size, size, 3]: noisy grey, one mark per label in its own random quadrant."""
    pixels = np.clip(128 + rng.randint(-20, 21, (size, size, 3)), 0, 255).astype(np.uint8)
    half = size // 2
    quadrants = rng.permutation(4)[:len(labels)]
    for label, quadrant in zip(labels, quadrants):
        colour, pattern = MARK_STYLES[label]
        top, left = (quadrant // 2) * half, (quadrant % 2) * half
        pixels[top:top + half, left:left + half] = synthetic_image(colour, pattern, half, half, rng)
    return pixels


def label_sets(count, seed=0, marks=(1, 2, 3)):
    """count random label sets (sorted tuples), each of a number of marks drawn from marks."""
    rng = np.random.RandomState(seed)
    names = sorted(MARK_STYLES)
    return [tuple(sorted(rng.choice(names, rng.choice(marks), replace=False).tolist()))
            for _ in range(count)]


def make_multi_label_photos(root, count=60, seed=0, csv_name=None, marks=(1, 2, 3)):
    """Write `count` photos of random label sets. -> {photo's content path: its labels}.

    Without csv_name each photo is written into the folder of each of its labels (copies);
    with it, once into photos/ and listed in root/csv_name ('path,labels', ';' between
    labels); the CSV then sits beside the image folder root/images.
    """
    rng = np.random.RandomState(seed + 1)
    truth = {}
    image_dir = os.path.join(root, "images") if csv_name else str(root)
    rows = ["path,labels"]
    for n, labels in enumerate(label_sets(count, seed, marks)):
        pixels = marked_image(labels, rng)
        folders = ["photos"] if csv_name else list(labels)
        first = os.path.join(image_dir, folders[0], f"photo{n:03d}.png")
        write_image(first, pixels, "PNG")
        with open(first, "rb") as f:
            data = f.read()
        for folder in folders[1:]:
            os.makedirs(os.path.join(image_dir, folder), exist_ok=True)
            with open(os.path.join(image_dir, folder, f"photo{n:03d}.png"), "wb") as f:
                f.write(data)
        truth[f"{folders[0]}/photo{n:03d}.png"] = labels
        rows.append(f"photos/photo{n:03d}.png,{';'.join(labels)}")
    if csv_name:
        with open(os.path.join(root, csv_name), "w", encoding="utf-8") as f:
            f.write("\n".join(rows) + "\n")
    return truth
