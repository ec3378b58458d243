"""Leave one site out: xreg.train.sites.without_site and
benchmarks/site_generalisation.py on tiny phantom "sites"."""

from __future__ import annotations

import json
import subprocess
import sys
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
