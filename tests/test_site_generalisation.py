"""Leave one site out: xreg.train.sites.without_site and
benchmarks/site_generalisation.py on tiny phantom "sites"."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from xreg.errors import ConfigError
from xreg.synth.generate import generate_dataset
from xreg.train import TrainConfig
from xreg.train.config import DataSource
from xreg.train.sites import without_site

REPO = Path(__file__).resolve().parents[1]


def test_without_site_drops_that_dataset_only() -> None:
    config = TrainConfig(name="multi", datasets=(
        DataSource("x", path="x.csv", weight=0.5), DataSource("y", path="y.csv"),
        DataSource("p", synth={"count": 10, "seed": 1})))
    left = without_site(config, "x")
    assert [d.name for d in left.datasets] == ["y", "p"]
    assert left.datasets == config.datasets[1:]
    assert left.name == "multi-without-x"
    assert [d.name for d in config.datasets] == ["x", "y", "p"]  # the recipe is unchanged
    assert left.to_dict() | {"datasets": None, "name": None} == \
        config.to_dict() | {"datasets": None, "name": None}
    assert without_site(TrainConfig(datasets=config.datasets), "p").name == "model-without-p"


def test_without_an_unknown_site_is_refused_by_name() -> None:
    config = TrainConfig(datasets=(DataSource("x", path="x.csv"), DataSource("y", path="y.csv")))
    with pytest.raises(ConfigError, match=r"no dataset 'z' \(it has x, y\)"):
        without_site(config, "z")
    with pytest.raises(ConfigError, match="no dataset 'x'"):
        without_site(without_site(config, "x"), "x")


def test_leave_one_site_out_script_on_phantom_sites(tmp_path: Path) -> None:
    sites = []
    for i, name in enumerate("abc"):
        generate_dataset(tmp_path / name, 40, seed=50 + i, size=96, instrument_rate=0.3,
                         workers=1)
        sites += ["--site", f"{name}={tmp_path / name / 'labels.csv'}"]
    work = tmp_path / "work"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "site_generalisation.py"), *sites,
         "--work", str(work), "--epochs", "1", "--samples", "32", "--input-size", "64",
         "--phantoms", "0", "--arch", "mobilenet_v3_small", "--tiny", "--variant", "site",
         "--hold-out", "b", "--workers", "1"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    results = json.loads((work / "sweep.json").read_text())
    assert list(results) == ["site/b/mobilenet_v3_small/64"]  # b held out, nothing else
    row = results["site/b/mobilenet_v3_small/64"]
    assert row["site"] == "b" and row["variant"] == "site"
    figures = row["figures"]
    assert figures["films"] == 40
    shares = {}
    for key in ("correct_folder", "wrong_folder", "review_rate"):
        value, lo, hi = figures[key]
        assert 0.0 <= lo <= value <= hi <= 1.0, (key, figures[key])
        shares[key] = value
    # Phantoms are all of the nine: each film is in its folder, a wrong one, or _review.
    assert shares["review_rate"] + shares["wrong_folder"] <= 1.0 + 1e-9
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-9)
    assert 0.0 <= row["calibration"]["min_confidence"]["threshold"] <= 1.0
    assert "energy_max" in row["calibration"]["guard"]  # from a's and c's validation films

    # The run trained without b: its split holds a's and c's films, none of b's.
    run = work / "runs" / "site-mobilenet_v3_small-64" / "without-b.run"
    split = (run / "split.csv").read_text()
    assert all(f"{tmp_path / name}/" in split for name in "ac")
    assert f"{tmp_path / 'b'}/" not in split
    assert (work / "cache").is_dir() and list((work / "cache").glob("*.npy"))

    assert "| b | 40 |" in done.stdout
    assert "| **mean** |" in done.stdout


def _relabel(manifest: Path, out: Path, *, keep: set[str] | None = None,
             fracture: bool = False) -> Path:
    """A copy of a phantom manifest: only ``keep`` body parts, fracture labels made up."""
    import csv

    with manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    rows = [r for r in rows if keep is None or r["body_part"] in keep]
    for i, r in enumerate(rows):
        r["path"] = str((manifest.parent / r["path"]).resolve())
        r["fracture"] = str(int(i % 3 == 0)) if fracture else ""
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out


def test_drop_unlabelled_heads_keeps_what_some_dataset_labels(tmp_path: Path) -> None:
    from xreg.train.sites import drop_unlabelled_heads

    generate_dataset(tmp_path / "p", 12, seed=3, size=64, workers=1)
    labelled = _relabel(tmp_path / "p" / "labels.csv", tmp_path / "f.csv", fracture=True)
    bare = _relabel(tmp_path / "p" / "labels.csv", tmp_path / "b.csv")
    heads = ("body_part", "instrument", "fracture")
    both = TrainConfig(heads=heads, datasets=(DataSource("f", path=str(labelled)),
                                              DataSource("b", path=str(bare))))
    assert drop_unlabelled_heads(both).heads == heads
    assert drop_unlabelled_heads(without_site(both, "f")).heads == ("body_part", "instrument")


def test_the_many_classes_fold_and_the_guard_comparison_on_phantom_sites(
        tmp_path: Path) -> None:
    """The FracAtlas-out fold in small: site "many" holds every class; without it, two
    member recipes train on a spine-and-hip site and a knee-and-shoulder site, then
    every guard rule is scored on "many"'s films."""
    generate_dataset(tmp_path / "ph", 90, seed=70, size=96, instrument_rate=0.3, workers=1)
    src = tmp_path / "ph" / "labels.csv"
    manifests = {
        "many": _relabel(src, tmp_path / "many.csv", fracture=True),
        "axial": _relabel(src, tmp_path / "axial.csv", keep={"spine", "hip"}),
        "knees": _relabel(src, tmp_path / "knees.csv", keep={"knee", "shoulder"}),
    }
    sites = [arg for name, path in manifests.items() for arg in ("--site", f"{name}={path}")]
    work = tmp_path / "work"
    for variant in ("site", "mix"):
        done = subprocess.run(
            [sys.executable, str(REPO / "benchmarks" / "site_generalisation.py"), *sites,
             "--work", str(work), "--epochs", "1", "--samples", "32", "--input-size", "64",
             "--phantoms", "0", "--arch", "mobilenet_v3_small", "--tiny", "--variant",
             variant, "--hold-out", "many", "--workers", "1"],
            capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((work / "sweep.json").read_text())
    assert set(results) == {"site/many/mobilenet_v3_small/64", "mix/many/mobilenet_v3_small/64"}
    assert results["site/many/mobilenet_v3_small/64"]["figures"]["films"] == 90
    import csv

    with manifests["many"].open() as f:
        counts = Counter(r["body_part"] for r in csv.DictReader(f))
    out = tmp_path / "selective.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "selective_prediction.py"), "--work",
         str(work), "--member", "site-mobilenet_v3_small-64", "--member",
         "mix-mobilenet_v3_small-64", "--site", f"many={manifests['many']}",
         "--train-sample", "50", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    fold = json.loads(out.read_text())["many"]
    assert fold["films"] == 90
    assert {"confidence", "energy", "mahalanobis", "knn", "flip", "agree",
            "agree+knn"} <= set(fold["operating"])
    for rule, row in fold["operating"].items():
        assert 0.0 <= row["wrong_folder"] <= row["sorted"] <= 1.0, rule
        # wrong folder by class: each class's films misfiled, which add up to the whole
        total = sum(share * counts[c] for c, share in row["wrong_by_class"].items())
        assert total / 90 == pytest.approx(row["wrong_folder"], abs=0.02), rule
        curve = fold["curves"][rule]
        assert curve["coverage"] == sorted(curve["coverage"])
        assert curve["wrong"] == sorted(curve["wrong"])
        assert all(w <= c + 1e-9 for w, c in zip(curve["wrong"], curve["coverage"]))
    assert "### without many" in done.stdout and "| agree+knn |" in done.stdout
