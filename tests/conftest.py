"""Shared fixtures: a tiny random-weight checkpoint and a mixed input folder."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from xreg.model.checkpoint import make_random_checkpoint

# Real DICOM files from pydicom's own test data: compressed and uncompressed,
# MONOCHROME1/2, RGB, multi-frame.
DICOM_SAMPLES = (
    "CT_small.dcm",
    "MR_small_RLE.dcm",
    "RG1_J2KR.dcm",
    "JPGLosslessP14SV1_1s_1f_8b.dcm",
    "SC_rgb.dcm",
)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_old(path: Path) -> None:
    """Backdate a file so --min-age never skips it."""
    past = time.time() - 3600
    os.utime(path, (past, past))


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    make_random_checkpoint(path, arch="mobilenet_v3_small", input_size=64, seed=0)
    return path


def write_inputs(root: Path) -> dict[str, Path]:
    """A small, realistic mess: PNG, JPEG, extension-less DICOM, nested
    folders, a duplicate, a truncated JPEG and a zero-byte .dcm."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    (root / "ward" / "a").mkdir(parents=True)
    (root / "ward" / "b").mkdir(parents=True)
    for i in range(3):
        arr = (rng.random((96, 80)) * 65535).astype(np.uint16)
        p = root / f"png16_{i}.png"
        Image.fromarray(arr).save(p)
        files[p.name] = p
    for i in range(3):
        arr = (rng.random((120, 100)) * 255).astype(np.uint8)
        p = root / "ward" / "a" / f"photo_{i}.jpg"
        Image.fromarray(arr).save(p, quality=90)
        files[p.name] = p
    # Same name, different content, different folders: a clash at OUT.
    arr = (rng.random((64, 64)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(root / "ward" / "b" / "photo_0.jpg", quality=90)
    files["b/photo_0.jpg"] = root / "ward" / "b" / "photo_0.jpg"
    for name in DICOM_SAMPLES:
        dest = root / "dicom" / name.replace(".dcm", "")  # no extension, as in PACS exports
        dest.parent.mkdir(exist_ok=True)
        shutil.copyfile(get_testdata_file(name), dest)
        files[name] = dest
    # Same content twice: stored once, both sources recorded.
    shutil.copyfile(files["png16_0.png"], root / "ward" / "copy_of_png16_0.png")
    files["duplicate"] = root / "ward" / "copy_of_png16_0.png"
    buf = io.BytesIO()
    Image.fromarray((rng.random((200, 200)) * 255).astype(np.uint8)).save(buf, "JPEG")
    (root / "broken.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    files["broken.jpg"] = root / "broken.jpg"
    (root / "empty.dcm").write_bytes(b"")
    files["empty.dcm"] = root / "empty.dcm"
    (root / "notes.txt").write_text("not an image, ignored")
    for p in root.rglob("*"):
        if p.is_file():
            make_old(p)
    return files


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    root = tmp_path / "in"
    return root, write_inputs(root)


def hostile_dicom(path: Path) -> Path:
    """A DICOM file whose header values try to climb out of OUT."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.ViewPosition = "../../../../tmp"
    ds.StudyDate = "../../etc"
    ds.Modality = "/abs/olute"
    ds.save_as(path)
    make_old(path)
    return path


def biased_checkpoint(path: Path, body_parts: tuple[str, ...], top: str, *,
                      fracture: float | None = None, margin: float = 10.0,
                      guard: dict[str, float] | None = None) -> Path:
    """A checkpoint that calls every film ``top`` (zero weights, biased logits).

    With ``fracture`` (a logit for the positive class) it has a fracture head too.
    For tests of what happens *after* the model: folders, registry, JSON.
    """
    import torch

    from xreg.model.checkpoint import ModelCard, save_checkpoint
    from xreg.model.models import FRACTURE_HEAD, INSTRUMENT_HEAD, HeadSpec, build_model

    heads = [HeadSpec("body_part", body_parts), INSTRUMENT_HEAD]
    if fracture is not None:
        heads.append(FRACTURE_HEAD)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model("mobilenet_v3_small", heads, input_size=64)
    with torch.no_grad():
        for head in heads:
            linear = model.heads[head.name][2]
            linear.weight.zero_()
            bias = torch.zeros(len(head.labels))
            if head.name == "body_part":
                bias[body_parts.index(top)] = margin
            elif head.name == "fracture":
                bias[1] = float(fracture or 0.0)
            else:  # instrument: clearly none
                bias[0] = margin
            linear.bias.copy_(bias)
    thresholds = {"instrument": 0.5, "min_confidence": 0.5}
    if fracture is not None:
        thresholds["fracture"] = 0.5
    card = ModelCard(name=f"always-{top}", arch="mobilenet_v3_small", heads=tuple(heads),
                     input_size=64, mean=0.5, std=0.25, thresholds=thresholds,
                     guard=guard or {},
                     notes="Biased test weights: every film is " + top)
    save_checkpoint(path, model, card)
    return path
