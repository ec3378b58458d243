"""The header audit on phantoms with known header errors, and the DICOM write rate per film.

`xreg synth` writes DICOM phantoms whose BodyPartExamined is right, empty (10%)
or wrong (5%) on purpose, and records what it wrote. This sorts them (model:
``--weights``, default the shipped phantom-trained checkpoint), then prints
the audit verdicts against what was written: how many empty and wrong headers
are caught, and how many right ones are passed. Then it times ``--dicom-out``
per film: the heatmap (integrated gradients) and the SR + SC writing apart.

    python benchmarks/dicom_audit.py [--n 300] [--weights W.pt]
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sqlite3
import tempfile
import time
from collections import Counter
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--weights", type=Path, default=None)
    args = parser.parse_args()
    from xreg.config import SortOptions
    from xreg.explain.heatmaps import add_sort_heatmaps
    from xreg.model.card import shipped_weights
    from xreg.model.checkpoint import load_checkpoint
    from xreg.sort.audit import load_vocabulary
    from xreg.sort.dicom_out import write_sort_dicom
    from xreg.sort.runner import run_sort
    from xreg.synth.generate import generate_dataset

    weights = args.weights or shipped_weights("bodypart_instrument_phantom.pt")
    vocabulary = load_vocabulary()
    tmp = Path(tempfile.mkdtemp(prefix="xreg-audit-"))
    try:
        generate_dataset(tmp / "in", args.n, seed=31, size=512, formats=("dicom",), workers=2)
        out = tmp / "out"
        result = run_sort(tmp / "in", out, SortOptions(weights=weights, min_age=0,
                                                       min_confidence=0.0))
        with (tmp / "in" / "labels.csv").open(newline="") as fh:
            truth = {str(tmp / "in" / r["path"]): r for r in csv.DictReader(fh)}
        with sqlite3.connect(out / "registry.sqlite") as db:
            rows = db.execute("SELECT s.path, i.body_part, i.header_audit FROM images i"
                              " JOIN sources s USING (sha256)").fetchall()
        table: Counter[tuple[str, str]] = Counter()
        model_right = 0
        for source, model, verdict in rows:
            label = truth[source]
            written = label["body_part_examined"]
            kind = ("empty" if not written else "right"
                    if vocabulary.body_part(written) == label["body_part"] else "wrong")
            table[(kind, verdict)] += 1
            model_right += model == label["body_part"]
        print(f"{len(rows)} DICOM phantoms sorted with {weights.name}; the model named the "
              f"right body part for {model_right} ({model_right / len(rows):.1%})")
        verdicts = sorted({v for _, v in table})
        print(f"{'header written':<16}" + "".join(f"{v:>11}" for v in verdicts) + f"{'films':>8}")
        for kind in ("right", "wrong", "empty"):
            n = sum(c for (k, _), c in table.items() if k == kind)
            print(f"{kind:<16}" + "".join(f"{table[(kind, v)]:>11}" for v in verdicts)
                  + f"{n:>8}")
        films = result.counts["sorted"] + result.counts["review"]
        drawn, seconds = add_sort_heatmaps(out, out / "registry.sqlite",
                                           load_checkpoint(weights))
        t0 = time.perf_counter()
        summary = write_sort_dicom(out, out / "registry.sqlite", "phantom", "0" * 64)
        writing = time.perf_counter() - t0
        print(f"\n--dicom-out on {films} films: heatmaps {seconds / max(drawn, 1) * 1000:.0f} ms "
              f"per film; SR + SC {writing / max(summary.films, 1) * 1000:.1f} ms per film "
              f"({summary.written} objects, {summary.films / writing:.0f} films/s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
