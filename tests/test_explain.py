"""Heatmaps: shapes, pointing at what the phantoms know is there, overlays, the commands."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from typer.testing import CliRunner

from xreg.cli import app
from xreg.explain.saliency import METHODS, Attribution, attribute, write_overlay
from xreg.model.checkpoint import LoadedModel, ModelCard, load_checkpoint
from xreg.model.models import STANDARD_HEADS, build_model
from xreg.model.transforms import Preprocessor
from xreg.synth.generate import generate_dataset, render_phantom
from xreg.synth.hardware import compatible_instruments
from xreg.synth.spec import BODY_PARTS, PhantomSpec

WEIGHTS = Path(__file__).resolve().parents[1] / "xreg" / "weights"


def random_model(arch: str, size: int) -> LoadedModel:
    torch.manual_seed(0)
    model = build_model(arch, STANDARD_HEADS, input_size=size).eval()
    card = ModelCard(name="t", arch=arch, heads=STANDARD_HEADS, input_size=size, mean=0.5,
                     std=0.25)
    return LoadedModel(model, card, "", Path("t.pt"))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("arch", "size"), [("mobilenet_v3_small", 64), ("resnet18", 64),
                                            ("vit_b_16", 32)])
def test_heatmap_matches_the_input_and_is_normalised(arch: str, size: int,
                                                     method: str) -> None:
    loaded = random_model(arch, size)
    x = torch.rand(3, 3, size, size)
    atts = attribute(loaded, x, head="body_part", method=method, steps=2)
    assert len(atts) == 3
    for a in atts:
        assert a.heatmap.shape == (size, size) and a.heatmap.dtype == np.float32
        # Scaled to [0, 1]; a Grad-CAM of random weights may be all zero after its ReLU.
        assert a.heatmap.min() == 0.0 and a.heatmap.max() in (0.0, pytest.approx(1.0))
        assert a.label in BODY_PARTS and 0 < a.probability <= 1
    # The ViT probe is gone afterwards: the model still gives the same logits.
    with torch.no_grad():
        before = loaded.model(x)["body_part"]
    attribute(loaded, x, head="body_part", method="gradcam")
    with torch.no_grad():
        assert torch.allclose(loaded.model(x)["body_part"], before)


def _peak_hits(heatmaps: list[np.ndarray], masks: list[np.ndarray]) -> float:
    hits = 0
    for heat, mask in zip(heatmaps, masks):
        near = ndimage.binary_dilation(mask, iterations=8)  # 2% of a 384 px film
        s_h, s_w = heat.shape
        r, c = np.unravel_index(heat.argmax(), heat.shape)
        hits += bool(near[int((r + 0.5) * near.shape[0] / s_h),
                          int((c + 0.5) * near.shape[1] / s_w)])
    return hits / len(heatmaps)


def test_instrument_heatmaps_point_at_the_hardware() -> None:
    loaded = load_checkpoint(WEIGHTS / "bodypart_instrument_phantom.pt")
    phantoms = []
    for i in range(18):
        part = BODY_PARTS[i % 9]
        kinds = compatible_instruments(part)
        phantoms.append(render_phantom(PhantomSpec(
            body_part=part, view=("AP", "LAT")[i % 2], laterality="R", seed=31_000 + i,
            size=384, instrument=kinds[i % len(kinds)])))
    x = torch.stack([Preprocessor(loaded.card)(p.image) for p in phantoms])
    masks = [p.masks["hardware"] for p in phantoms]
    atts = attribute(loaded, x, head="instrument", method="integrated-gradients",
                     targets=[1] * len(phantoms))
    rate = _peak_hits([a.heatmap for a in atts], masks)
    # A heatmap that is noise lands on the hardware far less often.
    rng = np.random.default_rng(0)
    noise = _peak_hits([rng.random(a.heatmap.shape).astype(np.float32) for a in atts], masks)
    assert rate >= 0.75 > 0.3 > noise, (rate, noise)


def test_fracture_heatmaps_of_the_joined_pair_point_at_the_fracture() -> None:
    loaded = load_checkpoint(WEIGHTS / "hip_fracture_phantom.pt")
    pre = Preprocessor(loaded.card)
    pairs = []
    for i in range(12):
        shared = dict(body_part="hip", laterality="L", size=384, patient_seed=700 + i,
                      fracture=("neck", "intertrochanteric")[i % 2])
        pairs.append((render_phantom(PhantomSpec(view="AP", seed=7000 + 2 * i, **shared)),
                      render_phantom(PhantomSpec(view="LAT", seed=7001 + 2 * i, **shared))))
    x = torch.stack([pre.pair(a.image, b.image) for a, b in pairs])
    atts = attribute(loaded, x, head="fracture", method="integrated-gradients",
                     targets=[1] * len(pairs))
    hits = 0
    for (ap, lat), att in zip(pairs, atts):
        s = att.heatmap.shape[0]
        assert att.heatmap.shape == (s, 2 * s)
        r, c = np.unravel_index(att.heatmap.argmax(), att.heatmap.shape)
        view, c = (ap, c) if c < s else (lat, c - s)
        near = ndimage.binary_dilation(view.masks["fracture"], iterations=8)
        hits += bool(near[int((r + 0.5) * 384 / s), int((c + 0.5) * 384 / s)])
    assert hits / len(pairs) >= 0.7


def test_overlay_opens_and_differs_from_the_plain_film(tmp_path: Path) -> None:
    film = np.tile(np.linspace(0, 1, 200, dtype=np.float32), (150, 1))
    heat = np.zeros((64, 64), np.float32)
    heat[20:30, 40:50] = 1.0
    path = write_overlay(tmp_path / "o.png", film, Attribution(heat, "instrument",
                                                               "instrument", 0.93))
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255
    assert rgb.shape == (150, 200, 3)
    plain = np.repeat(film[..., None], 3, axis=2)
    diff = np.abs(rgb - plain).sum(axis=2)
    # Changed where the heat is (and under the caption), unchanged far from both.
    hot_r, hot_c = int(25 * 150 / 64), int(45 * 200 / 64)
    assert diff[hot_r, hot_c] > 0.2
    assert diff[140, 10] < 0.02


def test_cli_explain_sort_and_hip_heatmaps(tmp_path: Path) -> None:
    generate_dataset(tmp_path / "in", 9, seed=12, size=256, hip_pairs=2, workers=1)
    runner = CliRunner()
    films = sorted((tmp_path / "in" / "images").glob("img_*"))[:2]
    res = runner.invoke(app, ["explain", *map(str, films), "--out", str(tmp_path / "h"),
                              "--method", "saliency", "--json"])
    assert res.exit_code == 0, res.output
    written = [Path(r["overlay"]) for r in json.loads(res.stdout)["results"]]
    assert len(written) == 2 and all(p.exists() for p in written)
    out = tmp_path / "out"
    res = runner.invoke(app, ["sort", str(tmp_path / "in"), str(out), "--min-age", "0",
                              "--heatmaps", "--hip", "--json"])
    assert res.exit_code in (0, 1), res.output
    assert json.loads(res.stdout)["heatmaps"]["written"] >= 9
    db = sqlite3.connect(out / "registry.sqlite")
    rows = db.execute("SELECT dest_path, heatmap_path FROM images WHERE status IN "
                      "('sorted', 'review')").fetchall()
    assert rows and all(h and h.startswith("_heatmaps/") and (out / h).is_file()
                        for _, h in rows)
    # Never inside the class folders.
    assert not [p for p in out.rglob("*_body_part.png") if "_heatmaps" not in p.parts]
    # Joined-pair overlays for scored pairs (a single_view study's film has its own).
    hips = db.execute("SELECT heatmap_path FROM hip_studies WHERE decision IS NOT NULL "
                      "AND status = 'paired'").fetchall()
    assert hips and all(h and (out / h).is_file() for (h,) in hips)


def test_an_overlay_explains_the_probability_the_sort_records(tmp_path: Path,
                                                             inputs: tuple[Path, dict]) -> None:
    # The attribution's input is decoded as the sort decodes it (not at display size),
    # so the caption's probability is the registry's.
    from xreg.explain.heatmaps import explain_files
    from xreg.inference.predict import SourceFile, predict_files
    from xreg.model.checkpoint import default_weights, load_checkpoint

    loaded = load_checkpoint(default_weights().with_name("bodypart_instrument_phantom.pt"))
    _, files = inputs
    # Larger than the display size, so drawing and sorting decode differently.
    big = tmp_path / "big.jpg"
    rng = np.random.default_rng(3)
    field = ndimage.gaussian_filter(rng.random((1400, 1100)), 25)
    Image.fromarray((255 * (field - field.min()) / np.ptp(field)).astype(np.uint8)).save(big)
    paths = [big, files["photo_1.jpg"], files["CT_small.dcm"]]
    sources = [SourceFile(p, p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    preds = [p for batch in predict_files(sources, loaded) for p in batch]
    done = explain_files(paths, loaded, [tmp_path / f"{i}.png" for i in range(3)],
                         head="body_part", method="saliency")
    for pred, explained in zip(preds, done):
        assert explained.attribution is not None
        assert explained.attribution.label == pred.labels["body_part"]
        assert explained.attribution.probability == pytest.approx(
            pred.confidence("body_part"), abs=1e-4)
