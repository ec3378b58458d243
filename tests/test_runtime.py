"""ONNX Runtime and PyTorch answer alike; the right one is chosen; the sort needs no torch."""

from __future__ import annotations

import csv
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from tests.conftest import DICOM_SAMPLES, make_old, write_inputs
from xreg.cli import app
from xreg.config import SortOptions
from xreg.errors import ConfigError
from xreg.hashing import file_sha256
from xreg.inference.pairs import predict_pairs
from xreg.inference.predict import SourceFile, predict_files
from xreg.inference.preprocess import Preprocessor
from xreg.inference.runtime import load_model, onnx_path
from xreg.io import load_image, try_load_image
from xreg.model.card import extra_outputs, shipped_weights
from xreg.model.checkpoint import make_random_checkpoint
from xreg.sort.runner import run_sort
from xreg.synth.generate import generate_dataset

SHIPPED = ("bodypart_sites", "bodypart_real", "bodypart_instrument_phantom",
           "hip_fracture_phantom")
# Real radiographs among pydicom's test files (CR of a tibia and a chest), plus the rest.
REAL_DICOM = ("RG3_J2KR.dcm", "RG1_J2KR.dcm", *DICOM_SAMPLES)
TOLERANCE = 1e-4
runner = CliRunner()


@pytest.fixture(scope="module")
def films(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Phantoms of every body part, hip pairs, and real DICOM files."""
    root = tmp_path_factory.mktemp("runtime")
    generate_dataset(root / "synth", 18, seed=4, size=320, hip_pairs=3, workers=1)
    phantoms = sorted((root / "synth" / "images").glob("img_*"))
    dicom = [Path(p) for p in map(get_testdata_file, REAL_DICOM) if p]
    with (root / "synth" / "hip_pairs.csv").open(newline="") as fh:
        pairs = [(root / "synth" / r["ap_path"], root / "synth" / r["lateral_path"])
                 for r in csv.DictReader(fh)]
    return {"single": phantoms + dicom, "ap": [a for a, _ in pairs],
            "lateral": [b for _, b in pairs]}


def _sources(paths: list[Path]) -> list[SourceFile]:
    return [SourceFile(p, p.stat().st_size, p.stat().st_mtime_ns) for p in paths]


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_model_decides_alike_on_onnx_and_torch(
        name: str, films: dict[str, list[Path]]) -> None:
    weights = shipped_weights(f"{name}.pt")
    onnx = load_model(weights, runtime="onnx")
    torch = load_model(weights, runtime="torch")
    assert (onnx.runtime.name, torch.runtime.name) == ("onnxruntime", "torch")
    assert onnx.sha256 == torch.sha256 == file_sha256(weights)
    assert onnx.card == torch.card
    pre = Preprocessor(onnx.card)
    size = onnx.card.input_size
    if onnx.card.views == 2:
        pairs = list(zip(films["ap"], films["lateral"]))
        x = np.stack([pre.pair(load_image(a, size).pixels, load_image(b, size).pixels)
                      for a, b in pairs])
        decided = [[(p.status, p.labels) for p in predict_pairs(pairs, m)]
                   for m in (onnx, torch)]
    else:
        readable = [p for p in films["single"] if not isinstance(try_load_image(p, size), str)]
        x = np.stack([pre(load_image(p, size).pixels) for p in readable])
        decided = [[(p.status, dict(p.labels)) for b in predict_files(
            _sources(films["single"]), m) for p in b] for m in (onnx, torch)]
    got, want = onnx.runtime.run(x), torch.runtime.run(x)
    assert set(got) == set(want) == {h.name for h in onnx.card.heads} | \
        set(extra_outputs(onnx.card))  # an ensemble's members' logits and distance
    for head in got:
        assert np.abs(got[head] - want[head]).max() <= TOLERANCE, head
    assert decided[0] == decided[1]
    assert len(decided[0]) >= 3


def test_auto_takes_onnx_only_for_an_export_of_these_very_bytes(tmp_path: Path) -> None:
    weights = tmp_path / "tiny.pt"
    make_random_checkpoint(weights, arch="mobilenet_v3_small", input_size=64, seed=0)
    assert load_model(weights).runtime.name == "torch"  # no export yet
    with pytest.raises(ConfigError, match="no ONNX export made from it"):
        load_model(weights, runtime="onnx")
    result = runner.invoke(app, ["weights", "export", str(weights)])
    assert result.exit_code == 0, result.output
    assert "largest logit difference" in result.output
    assert onnx_path(weights).is_file()
    model = load_model(weights)
    assert model.runtime.name == "onnxruntime" and model.sha256 == file_sha256(weights)
    direct = load_model(onnx_path(weights))
    assert direct.card == load_model(weights, runtime="torch").card
    info = runner.invoke(app, ["weights", "info", str(onnx_path(weights))])
    assert json.loads(info.stdout)["sha256"] == file_sha256(weights)
    # A retrained checkpoint under the same name: its old export no longer counts.
    make_random_checkpoint(weights, arch="mobilenet_v3_small", input_size=64, seed=1)
    assert load_model(weights).runtime.name == "torch"
    with pytest.raises(ConfigError, match="no ONNX export made from it"):
        load_model(weights, runtime="onnx")
    with pytest.raises(ConfigError, match="needs the .pt"):
        load_model(onnx_path(weights), runtime="torch")


def test_a_sort_records_its_runtime_and_both_runtimes_place_alike(tmp_path: Path) -> None:
    write_inputs(tmp_path / "in")
    for name in REAL_DICOM[:2]:
        shutil.copyfile(get_testdata_file(name), tmp_path / "in" / name)
        make_old(tmp_path / "in" / name)
    places = {}
    for runtime in ("onnx", "torch"):
        out = tmp_path / runtime
        result = run_sort(tmp_path / "in", out, SortOptions(min_age=0, runtime=runtime))
        assert result.counts["sorted"] + result.counts["review"] >= 10
        with sqlite3.connect(out / "registry.sqlite") as db:
            (recorded,) = db.execute("SELECT runtime FROM runs").fetchone()
            places[runtime] = db.execute(
                "SELECT sha256, dest_path, body_part, instrument, fracture, model_sha256"
                " FROM images ORDER BY sha256").fetchall()
        assert recorded.startswith({"onnx": "onnxruntime ", "torch": "torch "}[runtime])
    assert places["onnx"] == places["torch"]


def test_sort_hip_and_registry_never_import_torch(tmp_path: Path) -> None:
    write_inputs(tmp_path / "in")
    generate_dataset(tmp_path / "in" / "hips", 0, seed=2, size=256, hip_pairs=2, workers=1)
    for p in (tmp_path / "in").rglob("*"):
        if p.is_file():
            make_old(p)
    script = (
        "import sys\n"
        "from xreg.cli import app\n"
        "for args in sys.argv[1:]:\n"
        "    sys.argv = ['xreg', *args.split('|')]\n"
        "    try:\n"
        "        app()\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, (args, exc.code)\n"
        "heavy = [m for m in ('torch', 'torchvision', 'sklearn', 'matplotlib', 'scipy',\n"
        "                     'captum', 'onnx') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n")
    out = tmp_path / "out"
    commands = [f"sort|{tmp_path / 'in'}|{out}|--quiet",
                f"hip|{tmp_path / 'in'}|{tmp_path / 'hip'}|--quiet",
                f"registry|stats|{out}", f"registry|export|{out}|-o|{tmp_path / 'e.csv'}",
                f"weights|info|{shipped_weights('bodypart_real.onnx')}"]
    done = subprocess.run([sys.executable, "-c", script, *commands], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "HEAVY []" in done.stdout, done.stdout[-2000:]
    with sqlite3.connect(out / "registry.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM images").fetchone()[0] >= 10
        assert db.execute("SELECT runtime FROM runs").fetchone()[0].startswith("onnxruntime")
