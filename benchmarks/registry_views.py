"""Query times of the registry-by-patient rollups (xreg.registry.patients).

Writes a synthetic registry straight into SQLite (no films, no model: the
queries only read rows): P patients with 1 to 5 studies each, S studies over
five years, N image rows (a study holds 1 to 6 films of one or two body
parts), 8% of films with hardware (kept in later studies of the same body
part), 5% with a fracture, 2% of films without a patient (plain files),
one in five studies keyed by a ``--group-by`` folder instead of a
StudyInstanceUID, 3% of films reviewed (some to another body part or
``not_msk``) and a hip pair score for a third of the hip studies. Then the
median of R runs of each query, in one process on a warm page cache.

    nice python benchmarks/registry_views.py [--images 100000] [--patients 10000]
        [--studies 30000] [--repeats 5] [--db PATH]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xreg.model.labels import BODY_PARTS
from xreg.registry import Registry
from xreg.registry.patients import (
    RegistryFilter,
    patient_timeline,
    patients,
    studies,
    studies_per_month,
)


def build(path: Path, n_images: int, n_patients: int, n_studies: int, seed: int = 0) -> None:
    """Write the synthetic registry at ``path`` (image, review and hip rows)."""
    rng = random.Random(seed)
    with Registry(path) as reg:
        run = reg.start_run(xreg_version="bench", input_root="/in", output_root="/out",
                            model_path="m.pt", model_name="m", model_sha256="ab", options={})
        # Each patient gets at least one study; the rest go to random patients.
        owners = list(range(n_patients)) + [rng.randrange(n_patients)
                                             for _ in range(n_studies - n_patients)]
        films_left = n_images
        images, reviews, hips = [], [], []
        hardware: set[tuple[int, str]] = set()
        for s, owner in enumerate(sorted(owners)):
            day = rng.randrange(5 * 365)
            date = f"{2019 + day // 365}{(day % 365) // 31 + 1:02d}{day % 28 + 1:02d}"
            parts = rng.sample(BODY_PARTS, 1 if rng.random() < 0.8 else 2)
            n = max(1, min(films_left - (n_studies - s - 1), rng.randint(1, 6)))
            if s == n_studies - 1:
                n = films_left
            films_left -= n
            uid = f"1.2.826.0.1.3680043.8.498.{s}" if rng.random() < 0.8 else None
            key = None if uid else f"{rng.getrandbits(128):032x}"
            patient = f"{owner:032x}" if rng.random() > 0.02 else None
            for f in range(n):
                part = parts[f % len(parts)]
                sha = f"{rng.getrandbits(256):064x}"
                metal = (owner, part) in hardware or rng.random() < 0.08
                if metal:
                    hardware.add((owner, part))
                status = "review" if rng.random() < 0.1 else "sorted"
                images.append((sha, 1000, "done", status, f"{part}/{sha[:12]}.dcm", "copy",
                               part, 0.9, int(metal), int(rng.random() < 0.05), uid, key,
                               patient, "CR", ("AP", "LAT")[f % 2], date, run, "t", "t"))
                if rng.random() < 0.03:
                    said = rng.choice([*BODY_PARTS, "not_msk"])
                    reviews.append((sha, "bench", "t", said, rng.choice([None, 0, 1])))
            if "hip" in parts and n >= 2 and rng.random() < 0.33:
                prob = rng.random()
                hips.append((run, uid or key, "paired", images[-1][0], images[-2][0], prob,
                             "fracture" if prob > 0.5 else "no_fracture", "t"))
        with reg._transaction() as db:
            db.executemany(
                "INSERT INTO images (sha256, size, state, status, dest_path, mode, body_part,"
                " body_part_prob, instrument, fracture, study_uid, study_key, patient_key,"
                " modality, view_position, study_date, run_id, created, updated)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", images)
            db.executemany("INSERT INTO reviews (sha256, reviewer, created, body_part,"
                           " instrument) VALUES (?, ?, ?, ?, ?)", reviews)
            db.executemany("INSERT INTO hip_studies (run_id, study, status, ap_sha256,"
                           " lateral_sha256, fracture_prob, decision, created)"
                           " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", hips)
        reg._db.execute("ANALYZE")


def median_time(call: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--studies", type=int, default=30_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--db", type=Path, help="Reuse (or write) this registry file.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.db or Path(tmp) / "registry.sqlite"
        if not path.exists():
            start = time.perf_counter()
            build(path, args.images, args.patients, args.studies)
            print(f"built {path} in {time.perf_counter() - start:.1f} s")
        with Registry(path, readonly=True) as reg:
            _report(reg, args.repeats)


def _report(reg: Registry, repeats: int) -> None:
    images = reg._db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
    key = reg._db.execute("SELECT patient_key FROM images WHERE patient_key IS NOT NULL"
                          " GROUP BY 1 ORDER BY COUNT(*) DESC LIMIT 1").fetchone()[0]
    knee_metal = RegistryFilter(body_part="knee", instrument=True)
    cases: list[tuple[str, Callable[[], Any]]] = [
        ("patients, page of 50", lambda: patients(reg, limit=50)),
        ("patients, page 100 of 50", lambda: patients(reg, limit=50, offset=4950)),
        ("patients, all", lambda: patients(reg)),
        ("patients knee+hardware, page of 50", lambda: patients(reg, knee_metal, limit=50)),
        ("patients knee+hardware, all", lambda: patients(reg, knee_metal)),
        ("patients 2021, fracture, page of 50", lambda: patients(
            reg, RegistryFilter(fracture=True, since="2021-01-01", until="2021-12-31"),
            limit=50)),
        ("patient_timeline (busiest patient)", lambda: patient_timeline(reg, key)),
        ("studies, page of 50", lambda: studies(reg, limit=50)),
        ("studies, all", lambda: studies(reg)),
        ("studies hip, page of 50", lambda: studies(reg, RegistryFilter(body_part="hip"),
                                                    limit=50)),
        ("studies_per_month", lambda: studies_per_month(reg)),
        ("studies_per_month hip", lambda: studies_per_month(
            reg, RegistryFilter(body_part="hip"))),
    ]
    print(f"{images:,} image rows; median of {repeats} runs")
    print(f"{'query':<40} {'median s':>9} {'rows':>7} {'total':>7}")
    for name, call in cases:
        seconds, result = median_time(call, repeats)
        rows, total = _sizes(result)
        print(f"{name:<40} {seconds:>9.3f} {rows:>7} {total:>7}")


def _sizes(result: Any) -> tuple[int, str]:
    if isinstance(result, tuple):
        return len(result[0]), str(result[1])
    if isinstance(result, dict):
        return len(result["studies"]), "-"
    return len(result), "-"


if __name__ == "__main__":
    main()
