#!/usr/bin/env python3
"""Build the small image-folder datasets the PyTorch peer (npid.py) and membank train on.

All but digits come from the CIFAR-10 JPEG archive (train/<class>/NNNN.jpg, test/<class>/NNNN.jpg):

* darkset   -- MNIST-like: the CIFAR image in grey, shrunk to a random 16-20 px side and pasted at a
               random position on a black 28x28 canvas; single-channel PNG (mode "L").
* cifarsub  -- the CIFAR-10 images as they are (32x32 RGB PNG).
* cifargrey24 -- the CIFAR-10 images in grey, resized to 24x24 (bilinear); single-channel PNG:
               another image size and no colour, on images a small CNN can learn in 8 epochs.
* cifardark -- dark backgrounds on images a small CNN can learn: the CIFAR image in colour, shrunk to
               a random 20-26 px side and pasted at a random position on a black 32x32 canvas
               (34-61% of the pixels black); RGB PNG.
* cifardark40 -- the same at another size: a random 25-32 px side on a black 40x40 canvas
               (36-61% black); RGB PNG.
* digits    -- MNIST-like synthetic digits: the glyph 0-9 in a random DejaVu font (system fonts,
               /usr/share/fonts/truetype/dejavu), stroke widened 0-2 px, elastically distorted, fitted into a
               16-22 px box, rotated +-20 degrees, grey level 200-255,
               slightly blurred, centred +-3 px on a black 28x28 canvas (as MNIST); single-channel PNG.
               (darkset turned out too hard for an 8-epoch small CNN: kNN ~15-19%.)

Train: the first --train-per-class images of each class (membank's `train_per_class` picks the
first ones too). Test: the first --test-per-class images of each class of the test split.
Seeded and deterministic: the same arguments give byte-identical files.

    python make_datasets.py --archive ../shared/data/cifar10/cifar10-jpeg.tar.gz --out /tmp
"""
import argparse
import glob
import io
import os
import random
import tarfile
from collections import defaultdict

from PIL import Image


def read_archive(path, train_per_class, test_per_class):
    """{split: {class: [(name, PIL RGB image)]}} with the first N names per class, sorted."""
    want = {"train": train_per_class, "test": test_per_class}
    members = defaultdict(lambda: defaultdict(list))
    with tarfile.open(path, "r:gz") as tar:
        infos = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")]
        by_class = defaultdict(lambda: defaultdict(list))
        for m in infos:
            parts = m.name.strip("./").split("/")
            split, cls, name = parts[-3], parts[-2], parts[-1]
            if split in want:
                by_class[split][cls].append((name, m))
        for split, classes in by_class.items():
            for cls, items in classes.items():
                for name, m in sorted(items)[: want[split]]:
                    img = Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB")
                    members[split][cls].append((name, img))
    return members


def on_black(img, rng, canvas, lo, hi, mode):
    """The image in `mode` ("L" or "RGB"), shrunk to a random lo-hi px side and pasted at a random
    position on a black canvas x canvas image."""
    side = rng.randint(lo, hi)
    small = img.convert(mode).resize((side, side), Image.BILINEAR)
    out = Image.new(mode, (canvas, canvas), 0)
    x, y = rng.randint(0, canvas - side), rng.randint(0, canvas - side)
    out.paste(small, (x, y))
    return out


def elastic(img, rng, grid=4, amount=2.5):
    """A smooth random displacement (a 4x4 grid of offsets, bicubic-upsampled), so that every
    instance has its own shape, as handwriting does."""
    import numpy as np
    w, h = img.size
    src = np.asarray(img, dtype=np.float32)
    dx, dy = (np.asarray(Image.fromarray(np.array([[rng.gauss(0, amount) for _ in range(grid)]
                                                    for _ in range(grid)], dtype=np.float32), mode="F")
                         .resize((w, h), Image.BICUBIC)) for _ in range(2))
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    x = np.clip(xs + dx, 0, w - 1.001)
    y = np.clip(ys + dy, 0, h - 1.001)
    x0, y0 = x.astype(int), y.astype(int)
    fx, fy = x - x0, y - y0
    out = (src[y0, x0] * (1 - fx) * (1 - fy) + src[y0, x0 + 1] * fx * (1 - fy)
           + src[y0 + 1, x0] * (1 - fx) * fy + src[y0 + 1, x0 + 1] * fx * fy)
    return Image.fromarray(out.clip(0, 255).astype(np.uint8), mode="L")


def digit(cls, rng, fonts, canvas=28):
    from PIL import ImageDraw, ImageFilter, ImageFont
    font = ImageFont.truetype(rng.choice(fonts), 40)
    glyph = Image.new("L", (64, 64), 0)
    ink = rng.randint(200, 255)
    ImageDraw.Draw(glyph).text((32, 32), str(cls), fill=ink, font=font, anchor="mm",
                               stroke_width=rng.randint(0, 2), stroke_fill=ink)
    glyph = elastic(glyph, rng)
    glyph = glyph.rotate(rng.uniform(-20, 20), resample=Image.BILINEAR)
    glyph = glyph.crop(glyph.getbbox() or (0, 0, 64, 64))
    w, h = glyph.size
    f = rng.randint(16, 22) / max(w, h)
    glyph = glyph.resize((max(1, round(w * f)), max(1, round(h * f))), Image.LANCZOS)
    w, h = glyph.size
    out = Image.new("L", (canvas, canvas), 0)
    x = min(max((canvas - w) // 2 + rng.randint(-3, 3), 0), canvas - w)
    y = min(max((canvas - h) // 2 + rng.randint(-3, 3), 0), canvas - h)
    out.paste(glyph, (x, y))
    return out.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 0.7)))


def make_digits(out_dir, train_per_class, test_per_class, seed):
    fonts = sorted(glob.glob("/usr/share/fonts/truetype/dejavu/*.ttf"))
    if not fonts:
        raise SystemExit("digits: no DejaVu fonts under /usr/share/fonts/truetype/dejavu")
    rng = random.Random(seed)
    for split, count in [("train", train_per_class), ("test", test_per_class)]:
        for cls in range(10):
            d = os.path.join(out_dir, "digits", split, str(cls))
            os.makedirs(d, exist_ok=True)
            for i in range(count):
                digit(cls, rng, fonts).save(os.path.join(d, f"{i:04d}.png"))
    print(f"digits: {10 * (train_per_class + test_per_class)} images under {os.path.join(out_dir, 'digits')}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archive", default="/work/shared/data/cifar10/cifar10-jpeg.tar.gz")
    p.add_argument("--out", default="/tmp", help="writes OUT/darkset, OUT/cifarsub, OUT/cifargrey24, OUT/cifardark, OUT/cifardark40 and OUT/digits")
    p.add_argument("--train-per-class", type=int, default=500)
    p.add_argument("--test-per-class", type=int, default=100, help="darkset test images per class")
    p.add_argument("--cifar-test-per-class", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", choices=["darkset", "cifarsub", "cifargrey24", "cifardark", "cifardark40", "digits"], default=None)
    a = p.parse_args()
    if a.only in (None, "digits"):
        make_digits(a.out, a.train_per_class, a.test_per_class, a.seed)
    if a.only == "digits":
        return
    data = read_archive(a.archive, a.train_per_class, max(a.test_per_class, a.cifar_test_per_class))
    for kind in ["darkset", "cifarsub", "cifargrey24", "cifardark", "cifardark40"]:
        if a.only and kind != a.only:
            continue
        rng = random.Random(a.seed)
        for split in ["train", "test"]:
            limit = a.train_per_class if split == "train" else (
                a.test_per_class if kind == "darkset" else a.cifar_test_per_class)
            for cls in sorted(data[split]):
                d = os.path.join(a.out, kind, split, cls)
                os.makedirs(d, exist_ok=True)
                for name, img in data[split][cls][:limit]:
                    if kind == "darkset":
                        out = on_black(img, rng, canvas=28, lo=16, hi=20, mode="L")
                    elif kind == "cifardark":
                        out = on_black(img, rng, canvas=32, lo=20, hi=26, mode="RGB")
                    elif kind == "cifardark40":
                        out = on_black(img, rng, canvas=40, lo=25, hi=32, mode="RGB")
                    elif kind == "cifargrey24":
                        out = img.convert("L").resize((24, 24), Image.BILINEAR)
                    else:
                        out = img
                    out.save(os.path.join(d, name.replace(".jpg", ".png")), optimize=False)
        n = sum(len(os.listdir(os.path.join(a.out, kind, s, c)))
                for s in ["train", "test"] for c in os.listdir(os.path.join(a.out, kind, s)))
        print(f"{kind}: {n} images under {os.path.join(a.out, kind)}")


if __name__ == "__main__":
    main()
