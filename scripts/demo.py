"""`make demo`: sort a small mixed-format folder and show the registry.

Placeholder until trained weights ship: the checkpoint is RANDOMLY
initialised, so the body-part labels are meaningless; what the demo shows is
the pipeline (phantoms from `xreg synth` as 16-bit PNG, JPEG and DICOM, real
DICOM from pydicom's test data, a truncated file, a duplicate) and the
registry it builds.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from pydicom.data import get_testdata_file

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo"
XREG = [sys.executable, "-m", "xreg"]
DICOM = ("CT_small.dcm", "MR_small_RLE.dcm", "RG1_J2KR.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm",
         "SC_rgb.dcm", "emri_small.dcm")


def make_inputs(folder: Path) -> None:
    """Phantoms from `xreg synth` plus real DICOM files and the usual mess."""
    run("synth", str(folder / "phantoms"), "--count", "36", "--size", "512",
        "--hip-pairs", "2", "--seed", "7", "--quiet")
    (folder / "pacs_export").mkdir(parents=True)
    for name in DICOM:
        path = get_testdata_file(name)
        if path:  # extension-less, as PACS exports often are
            shutil.copyfile(path, folder / "pacs_export" / Path(name).stem)
    first_png = sorted((folder / "phantoms").rglob("*.png"))[0]
    shutil.copyfile(first_png, folder / "same_film_again.png")
    data = sorted((folder / "phantoms").rglob("*.jpg"))[0].read_bytes()
    (folder / "cut_off.jpg").write_bytes(data[: len(data) // 2])


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
