"""`make demo`: sort a small mixed-format folder with the shipped weights, then score it.

1. `xreg synth`: 90 phantoms (16-bit PNG, JPEG and DICOM in turn, some DICOM
   without an extension), 6 AP+LAT hip studies and 10 images that are none
   of the body parts (chest, skull, abdomen, blank, a colour photo); plus
   real DICOM from pydicom's test data, a JPEG cut in half, one missing its
   last 20 bytes (sorted with a warning) and a duplicate.
2. `xreg sort` with the shipped default weights (no --weights needed), twice:
   the second run finds everything already done.
3. `xreg registry stats` and `xreg registry studies`, then `xreg evaluate`
   against the phantom labels, writing a report with ROC and confusion-matrix plots.
4. `xreg explain` on a phantom with hardware: a heatmap overlay of why the
   model says "instrument".
5. `xreg hip`: pair the hip studies' AP and lateral films (DICOM headers,
   file names) and score fracture with the shipped two-view model.
6. Print how to open the sorted folder in the web app (`xreg serve`).

The shipped default was trained on real films of four sites plus phantoms, the hip
model on phantoms only; see xreg/weights/*.md.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

from pydicom.data import get_testdata_file

from xreg.model.checkpoint import default_weights

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo"
XREG = [sys.executable, "-m", "xreg"]
# Real files: a distal tibia CR (in scope), a chest CR, CT, MR, ultrasound, RGB.
DICOM = ("RG3_J2KR.dcm", "RG1_J2KR.dcm", "CT_small.dcm", "MR_small_RLE.dcm",
         "JPGLosslessP14SV1_1s_1f_8b.dcm", "SC_rgb.dcm")


def make_inputs(folder: Path) -> None:
    """Phantoms from `xreg synth` plus real DICOM files and the usual mess."""
    run("synth", str(folder / "phantoms"), "--count", "90", "--size", "512",
        "--hip-pairs", "6", "--out-of-scope", "10", "--instrument-rate", "0.25",
        "--seed", "7", "--quiet")
    (folder / "pacs_export").mkdir(parents=True)
    for name in DICOM:
        path = get_testdata_file(name)
        if path:  # extension-less, as PACS exports often are
            shutil.copyfile(path, folder / "pacs_export" / Path(name).stem)
    first_png = sorted((folder / "phantoms" / "images").glob("img_*.png"))[0]
    shutil.copyfile(first_png, folder / "same_film_again.png")
    data = sorted((folder / "phantoms" / "images").glob("img_*.jpg"))[0].read_bytes()
    (folder / "cut_off.jpg").write_bytes(data[: len(data) // 2])
    (folder / "last_bytes_missing.jpg").write_bytes(data[:-20])


def run(*args: str) -> int:
    print("$ xreg " + " ".join(args), flush=True)
    return subprocess.run([*XREG, *args], check=False).returncode


def main() -> None:
    shutil.rmtree(DEMO, ignore_errors=True)
    make_inputs(DEMO / "in")
    print("\nNOTE: the default weights were trained on real films of four sites and phantoms; "
          "the hip model on phantoms only. Not for clinical use (xreg/weights/*.md).\n")
    run("sort", str(DEMO / "in"), str(DEMO / "out"), "--min-age", "0")
    run("sort", str(DEMO / "in"), str(DEMO / "out"), "--min-age", "0")
    run("registry", "stats", str(DEMO / "out"))
    run("registry", "studies", str(DEMO / "out"), "--limit", "8")  # the registry by study
    run("evaluate", str(default_weights()),
        str(DEMO / "in" / "phantoms" / "labels.csv"), "--report", str(DEMO / "report"))
    labels = DEMO / "in" / "phantoms" / "labels.csv"
    with labels.open(newline="") as fh:
        with_hardware = next(r["path"] for r in csv.DictReader(fh) if r["instrument"] == "1")
    run("explain", str(labels.parent / with_hardware), "--head", "instrument",
        "--out", str(DEMO / "heatmaps"))
    run("hip", str(DEMO / "in"), str(DEMO / "hip"), "--min-age", "0")
    print(f"\nSorted folder: {DEMO / 'out'}  (registry: {DEMO / 'out' / 'registry.sqlite'})")
    print(f"Report: {DEMO / 'report' / 'report.md'}; hip studies: {DEMO / 'hip' / 'hip'}")
    print(f"Browse and review it: {Path(sys.executable).parent / 'xreg'} serve {DEMO / 'out'}"
          "  (then http://localhost:8000/)")


if __name__ == "__main__":
    main()
