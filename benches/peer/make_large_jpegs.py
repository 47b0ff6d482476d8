"""Writes ImageNet-sized JPEGs made from CIFAR-10, for the streaming-loader comparison.

    python make_large_jpegs.py CIFAR10_JPEG_TAR_GZ OUT_DIR PER_CLASS

The first PER_CLASS training images of every class, resized (bilinear) to 500x375 and saved as
JPEG quality 90 into OUT_DIR/<class>/NNNN.jpg. Deterministic: same arguments, same files.
"""
import io
import os
import sys
import tarfile

from PIL import Image


def main():
    archive, out, per_class = sys.argv[1], sys.argv[2], int(sys.argv[3])
    taken = {}
    with tarfile.open(archive, "r:*") as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            parts = member.name.strip("./").split("/")
            if not member.isfile() or len(parts) != 3 or parts[0] != "train":
                continue
            cls = parts[1]
            if taken.get(cls, 0) >= per_class:
                continue
            img = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")
            img = img.resize((500, 375), Image.BILINEAR)
            os.makedirs(os.path.join(out, cls), exist_ok=True)
            img.save(os.path.join(out, cls, "%04d.jpg" % taken.get(cls, 0)), quality=90)
            taken[cls] = taken.get(cls, 0) + 1
    print("wrote %d JPEGs of 500x375 to %s" % (sum(taken.values()), out))


if __name__ == "__main__":
    main()
