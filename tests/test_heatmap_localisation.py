"""benchmarks/heatmap_localisation.py: peak-in-outline scoring, scaling back, a whole run."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image

import xreg.explain.saliency
from xreg.explain.saliency import METHODS, Attribution
from xreg.model.checkpoint import ModelCard, save_checkpoint
from xreg.model.models import BODY_PART_HEAD, INSTRUMENT_HEAD, HeadSpec, build_model

REPO = Path(__file__).resolve().parents[1]
FRACATLAS = Path(__file__).resolve().parents[2] / "shared/data/fracatlas"


def _load_benchmark() -> ModuleType:
    path = REPO / "benchmarks" / "heatmap_localisation.py"
    spec = importlib.util.spec_from_file_location("heatmap_localisation", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


hl = _load_benchmark()


def rect(x: float, y: float, w: float, h: float) -> object:
    return hl.Outline((x, y, w, h), np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]]))


def peaked(shape: tuple[int, int], row: int, col: int) -> np.ndarray:
    heat = np.zeros(shape, np.float32)
    heat[row, col] = 1.0
    return heat


def test_parse_polygon_reads_pairs_and_refuses_odd_or_short_input() -> None:
    poly = hl.parse_polygon("1.5 2 3 4.25 5 6")
    assert poly.shape == (3, 2) and poly[1].tolist() == [3.0, 4.25]
    with pytest.raises(ValueError, match="at least 3"):
        hl.parse_polygon("1 2 3 4 5")
    with pytest.raises(ValueError, match="at least 3"):
        hl.parse_polygon("1 2 3 4")


def test_peak_inside_hits_and_beyond_tolerance_misses() -> None:
    # 64x64 map over a 64x64 film: model pixel (20, 30) has its centre at x=30.5, y=20.5.
    heat = peaked((64, 64), 20, 30)
    assert hl.peak_hits(heat, [rect(28, 18, 5, 5)], (64, 64), 0.0)
    far = [rect(40, 18, 5, 5)]  # 9.5 px to the right of the peak
    assert not hl.peak_hits(heat, far, (64, 64), 9.0)
    assert hl.peak_hits(heat, far, (64, 64), 9.6)
    for criterion in hl.CRITERIA:
        assert not hl.peak_hits(heat, far, (64, 64), 2.0, criterion=criterion)


def test_peak_is_scaled_back_per_axis_for_non_square_films() -> None:
    heat = peaked((64, 64), 10, 50)
    # A 100 high x 200 wide film: x = 50.5 * 200/64 = 157.8, y = 10.5 * 100/64 = 16.4.
    assert hl.to_original(10, 50, (64, 64), (100, 200)) == pytest.approx([157.8125, 16.40625])
    box = [rect(150, 10, 15, 12)]
    assert hl.peak_hits(heat, box, (100, 200), 0.0)
    # The same map over a 200 x 100 film lands at (78.9, 32.8): not in that box.
    assert not hl.peak_hits(heat, box, (200, 100), 5.0)
    assert hl.peak_hits(heat, [rect(75, 30, 8, 6)], (200, 100), 0.0)


def test_polygon_and_box_criteria_differ_in_the_box_corner() -> None:
    # Triangle (0,0)-(100,0)-(0,100); its box is 100x100. The point (80, 80) is in
    # the box but 42.4 px from the triangle's long edge.
    triangle = hl.Outline((0, 0, 100, 100), hl.parse_polygon("0 0 100 0 0 100"))
    hits = hl.point_hits(np.array([[80.0, 80.0], [10.0, 10.0]]), [triangle], 20.0)
    assert hits["inside"].tolist() == [False, True]
    assert hits["near"].tolist() == [False, True]
    assert hits["box"].tolist() == [True, True]
    corner = np.array([[80.0, 80.0]])
    assert hl.point_hits(corner, [triangle], 42.0)["near"].tolist() == [False]
    assert hl.point_hits(corner, [triangle], 42.5)["near"].tolist() == [True]


def test_a_flat_map_points_nowhere_and_blur_moves_the_peak_to_the_mass() -> None:
    assert hl.peak_pixel(np.zeros((8, 8))) is None
    assert not hl.peak_hits(np.zeros((8, 8)), [rect(0, 0, 8, 8)], (8, 8), 0.0)
    heat = np.zeros((32, 32))
    heat[2, 2] = 1.0  # one hot pixel
    heat[20:25, 20:25] = 0.9  # a broad bright patch
    assert hl.peak_pixel(heat) == (2, 2)
    assert hl.peak_pixel(heat, sigma=2.0) == (22, 22)


def test_chance_is_the_share_of_model_pixels_that_hit() -> None:
    # Left half of an 80 wide film: exactly half the 64 columns' centres fall in it.
    rates = hl.chance_rates([rect(0, 0, 40, 60)], (64, 64), (60, 80), 0.0)
    assert rates == {"inside": 0.5, "near": 0.5, "box": 0.5}
    assert hl.chance_rates([rect(0, 0, 40, 60)], (64, 64), (60, 80), 40.0)["near"] == 1.0


def test_tolerance_and_bootstrap() -> None:
    assert hl.tolerance_px("2%", (1000, 500)) == pytest.approx(20.0)
    assert hl.tolerance_px("7", (1000, 500)) == 7.0
    with pytest.raises(ValueError, match=">= 0"):
        hl.tolerance_px("-1", (10, 10))
    assert hl.bootstrap_ci([1.0] * 10) == (1.0, 1.0, 1.0)
    mean, low, high = hl.bootstrap_ci([0.0, 1.0] * 20, seed=3)
    assert mean == 0.5 and 0.3 < low < 0.5 < high < 0.7
    assert hl.bootstrap_ci([0.0, 1.0] * 20, seed=3) == (mean, low, high)


def _write_folder(root: Path) -> dict[str, tuple[int, int]]:
    """Films a (60x80 JPEG), b (90x50 PNG), r (EXIF-rotated), w (wrong size in the
    CSV) fractured with outlines; n not fractured; h has a box but fracture = 0."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    shapes = {"a.jpg": (60, 80), "b.png": (90, 50), "r.jpg": (60, 80), "w.png": (40, 40),
              "n.png": (50, 50), "h.png": (50, 50)}
    for name, shape in shapes.items():
        im = Image.fromarray((rng.random(shape) * 255).astype(np.uint8))
        if name == "r.jpg":
            exif = Image.Exif()
            exif[0x0112] = 3
            im.save(root / "images" / name, exif=exif)
        else:
            im.save(root / "images" / name)
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "body_part", "fracture", "patient_id", "dup_of"])
        for name in shapes:
            w.writerow([f"images/{name}", "hand", int(name[0] not in "nh"), "p", ""])
    boxes = [("a.jpg", 80, 60, (0, 0, 40, 60), "0 0 40 0 40 60 0 60"),
             ("b.png", 50, 90, (5, 5, 10, 10), "5 5 15 5 15 15 5 15"),
             ("b.png", 50, 90, (30, 60, 10, 20), "30 60 40 60 40 80"),
             ("r.jpg", 80, 60, (0, 0, 10, 10), "0 0 10 0 10 10"),
             ("w.png", 41, 40, (0, 0, 10, 10), "0 0 10 0 10 10"),
             ("h.png", 50, 50, (0, 0, 10, 10), "0 0 10 0 10 10")]
    with open(root / "fracture_boxes.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "width", "height", "x", "y", "w", "h", "polygon"])
        for name, width, height, box, poly in boxes:
            w.writerow([f"images/{name}", width, height, *box, poly])
    return shapes


@pytest.fixture(scope="module")
def fracture_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    heads = (BODY_PART_HEAD, INSTRUMENT_HEAD, HeadSpec("fracture", ("no_fracture", "fracture")))
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", heads, input_size=64)
    card = ModelCard(name="random-fracture-64", arch="mobilenet_v2", heads=heads,
                     input_size=64, mean=0.5, std=0.25, notes="random weights")
    path = tmp_path_factory.mktemp("weights") / "fracture.pt"
    save_checkpoint(path, model, card)
    return path


def test_a_whole_run_scores_the_right_films_and_writes_figures(
        tmp_path: Path, fracture_weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "fracatlas"
    _write_folder(data)
    out, overlays = tmp_path / "loc.json", tmp_path / "overlays"
    rc = hl.main(["--data", str(data), "--weights", str(fracture_weights), "--json", str(out),
                  "--overlays", str(overlays), "--no-progress", "--steps", "2"])
    assert rc == 0
    result = json.loads(out.read_text())
    assert (result["films"], result["scored"]) == (4, 2)  # a, b, r, w; n and h are not
    assert result["skipped"] == {"EXIF orientation 3: annotation frame unknown": 1,
                                 "decoded size differs from fracture_boxes.csv": 1}
    rows = {(r["method"], r["sigma"]): r for r in result["rows"]}
    assert set(rows) == {(m, s) for m in (*METHODS, "random map") for s in (0.0, 2.0)} | {
        ("chance", None)}
    assert all(r["n"] == 2 for r in rows.values())
    # Chance: the mean over films of the pure function (a's outline is its left half).
    films = {f.path.name: f for f in hl.read_films(data)}
    a = hl.chance_rates(films["a.jpg"].outlines, (64, 64), (60, 80), 0.02 * 80)
    b = hl.chance_rates(films["b.png"].outlines, (64, 64), (90, 50), 0.02 * 90)
    assert a["inside"] == 0.5 and a["near"] > 0.5
    for criterion in hl.CRITERIA:
        expected = (a[criterion] + b[criterion]) / 2
        assert rows["chance", None][criterion]["rate"] == pytest.approx(expected)
        for r in rows.values():
            assert r[criterion]["low"] <= r[criterion]["rate"] <= r[criterion]["high"]
    assert sorted(p.name for p in overlays.iterdir()) == sorted(
        f"{stem}_{m}.png" for stem in ("a", "b") for m in METHODS)
    with Image.open(overlays / "b_saliency.png") as im:
        assert im.size == (50, 90)
    assert "| chance | - | 2 |" in capsys.readouterr().out


def test_peaks_are_scored_where_the_heatmaps_point(
        tmp_path: Path, fracture_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "fracatlas"
    _write_folder(data)

    def fake(loaded: object, x: torch.Tensor, *, head: str, method: str,
             targets: list[int], steps: int) -> list[Attribution]:
        assert head == "fracture" and targets == [1] * x.shape[0]
        # Film a (first): inside its left half. Film b: bottom right, far from both outlines.
        spots = [(32, 10), (63, 63)][: x.shape[0]]
        return [Attribution(peaked((64, 64), *rc), head, "fracture", 0.9) for rc in spots]

    monkeypatch.setattr(xreg.explain.saliency, "attribute", fake)
    out = tmp_path / "loc.json"
    assert hl.main(["--data", str(data), "--weights", str(fracture_weights), "--json", str(out),
                    "--no-progress", "--methods", "saliency", "--sigmas", "0"]) == 0
    row = next(r for r in json.loads(out.read_text())["rows"] if r["method"] == "saliency")
    assert {c: row[c]["rate"] for c in hl.CRITERIA} == {"inside": 0.5, "near": 0.5, "box": 0.5}
    split = tmp_path / "split.csv"
    split.write_text(f"path,split\nimages/a.jpg,test\n{data / 'images/b.png'},train\n")
    assert hl.main(["--data", str(data), "--weights", str(fracture_weights), "--json", str(out),
                    "--no-progress", "--methods", "saliency", "--sigmas", "0",
                    "--split", str(split)]) == 0
    result = json.loads(out.read_text())
    assert result["films"] == 1 and result["rows"][0]["inside"]["rate"] == 1.0


def test_overlays_inside_the_repository_are_refused(fracture_weights: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        hl.main(["--data", "x", "--weights", str(fracture_weights),
                 "--overlays", str(REPO / "overlays")])
    assert exc.value.code == 2


@pytest.mark.skipif(not FRACATLAS.is_dir(), reason=f"FracAtlas is not at {FRACATLAS}")
def test_fracatlas_outlines_fit_their_films() -> None:
    films = hl.read_films(FRACATLAS)
    assert len(films) > 500
    for film in films:
        assert film.path.is_file()
        for o in film.outlines:
            x, y, w, h = o.box
            assert (o.polygon >= [x - 0.2, y - 0.2]).all()
            assert (o.polygon <= [x + w + 0.2, y + h + 0.2]).all()
            assert x + w <= film.shape[1] + 1 and y + h <= film.shape[0] + 1
    for film in films[::50]:
        with Image.open(film.path) as im:
            assert im.size == (film.shape[1], film.shape[0])
