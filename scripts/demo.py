"""`make demo`: sort a small mixed-format folder and show the registry.

Placeholder until trained weights ship: the checkpoint is RANDOMLY
initialised, so the body-part labels are meaningless; what the demo shows is
the pipeline (real DICOM from pydicom's test data, 16-bit PNG, JPEG, a
truncated file, a duplicate) and the registry it builds.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.data import get_testdata_file

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo"
XREG = [sys.executable, "-m", "xreg"]
DICOM = ("CT_small.dcm", "MR_small_RLE.dcm", "RG1_J2KR.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm",
         "SC_rgb.dcm", "emri_small.dcm")


def make_inputs(folder: Path) -> None:
    rng = np.random.default_rng(7)
    (folder / "pacs_export").mkdir(parents=True)
    (folder / "scans").mkdir()
    for name in DICOM:
        path = get_testdata_file(name)
        if path:  # extension-less, as PACS exports often are
            shutil.copyfile(path, folder / "pacs_export" / Path(name).stem)
    yy, xx = np.mgrid[0:512, 0:400]
    for i in range(4):
        bone = np.exp(-((xx - 200 - 20 * i) ** 2) / 3000.0) * (0.5 + 0.5 * np.sin(yy / 40.0 + i))
        img = np.clip(bone + rng.normal(0, 0.05, bone.shape), 0, 1)
        Image.fromarray((img * 65535).astype(np.uint16)).save(folder / "scans" / f"film_{i}.png")
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / "scans" / f"photo_{i}.jpg")
    shutil.copyfile(folder / "scans" / "film_0.png", folder / "film_0_again.png")
    data = (folder / "scans" / "photo_0.jpg").read_bytes()
    (folder / "scans" / "cut_off.jpg").write_bytes(data[: len(data) // 2])


def run(*args: str) -> None:
    print("$ xreg " + " ".join(args), flush=True)
    subprocess.run([*XREG, *args], check=False)


def main() -> None:
    shutil.rmtree(DEMO, ignore_errors=True)
    make_inputs(DEMO / "in")
    weights = DEMO / "random-mobilenet_v2.pt"
    run("weights", "random", str(weights), "--arch", "mobilenet_v2", "--input-size", "224")
    print("\nNOTE: placeholder demo with RANDOM weights: labels are meaningless until trained "
          "weights ship.\n")
    run("sort", str(DEMO / "in"), str(DEMO / "out"), "--weights", str(weights),
        "--min-age", "0", "--min-confidence", "0")
    run("sort", str(DEMO / "in"), str(DEMO / "out"), "--weights", str(weights),
        "--min-age", "0", "--min-confidence", "0")
    run("registry", "stats", str(DEMO / "out"))
    print(f"\nSorted folder: {DEMO / 'out'}  (registry: {DEMO / 'out' / 'registry.sqlite'})")


if __name__ == "__main__":
    main()
