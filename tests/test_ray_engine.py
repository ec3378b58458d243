"""``xreg sort --engine ray``: the same registry as the local engine, the same guarantees."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import write_inputs
from tests.test_crash_safety import assert_complete, done_count, make_pngs
from xreg.config import SortOptions
from xreg.sort.runner import run_sort

pytest.importorskip("ray", reason='the ray engine needs its extra: pip install "xreg[ray]"')

# Everything the sort decides about a file; patient_key is keyed per registry, so not here.
COLUMNS = ("sha256", "status", "dest_path", "format", "body_part", "body_part_prob",
           "instrument", "instrument_prob", "probabilities", "error", "rows", "cols",
           "study_uid", "sop_uid", "modality", "scope", "review_reason", "fracture",
           "fracture_prob", "warning", "model_sha256")


def _rows(out: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(out / "registry.sqlite") as db:
        return db.execute(f"SELECT {', '.join(COLUMNS)} FROM images ORDER BY sha256").fetchall()


def _same(ray: list[tuple[object, ...]], local: list[tuple[object, ...]]) -> None:
    """Equal row for row; probabilities within 1e-5 (batches differ, so float sums do)."""
    assert len(ray) == len(local)
    for a, b in zip(ray, local):
        for name, x, y in zip(COLUMNS, a, b):
            if name == "probabilities" and x is not None:
                px, py = json.loads(str(x)), json.loads(str(y))
                assert px.keys() == py.keys()
                for head in px:
                    assert px[head] == pytest.approx(py[head], abs=1e-5), (a[0], head)
            elif isinstance(x, float):
                assert x == pytest.approx(y, abs=1e-5), (a[0], name)
            else:
                assert x == y, (a[0], name)


def _sources(out: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(out / "registry.sqlite") as db:
        return db.execute("SELECT path, sha256 FROM sources ORDER BY path").fetchall()


def test_ray_fills_the_registry_as_the_local_engine_does_and_a_rerun_does_nothing(
        tmp_path: Path) -> None:
    files = write_inputs(tmp_path / "in")
    os.chmod(files["photo_1.jpg"], 0)  # unreadable on the worker: that file's failure
    try:
        local = run_sort(tmp_path / "in", tmp_path / "local", SortOptions(min_age=0))
        ray = run_sort(tmp_path / "in", tmp_path / "ray",
                       SortOptions(min_age=0, engine="ray", workers=2, batch_size=4))
        again = run_sort(tmp_path / "in", tmp_path / "ray",
                         SortOptions(min_age=0, engine="ray", workers=1))
    finally:
        os.chmod(files["photo_1.jpg"], 0o644)
    assert dict(ray.counts) == dict(local.counts)
    _same(_rows(tmp_path / "ray"), _rows(tmp_path / "local"))
    assert _sources(tmp_path / "ray") == _sources(tmp_path / "local")
    unreadable = {r[2]: r[9] for r in _rows(tmp_path / "ray") if r[1] == "unreadable"}
    assert unreadable == {"_unreadable/broken.jpg": "truncated file",
                          "_unreadable/empty.dcm": "empty file"}
    if os.geteuid() != 0:  # root reads a mode-0 file anyway
        failed = [o for o in ray.outcomes if o.status == "failed"]
        assert [o.source for o in failed] == [str(files["photo_1.jpg"])]
    assert again.counts["already_done"] == len(again.outcomes) and not again.counts["sorted"]


def _ray_sort_under_way(folder: Path, out: Path, placed: int) -> subprocess.Popen[bytes]:
    """`xreg sort --engine ray` in its own session (its local Ray dies with it), once
    ``placed`` files are in OUT; it must still be running."""
    cmd = [sys.executable, "-m", "xreg", "sort", str(folder), str(out), "--engine", "ray",
           "--workers", "1", "--batch-size", "2", "--min-age", "0", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while done_count(out) < placed and proc.poll() is None:
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError("the ray sort never got going")
        time.sleep(0.01)
    assert proc.poll() is None, f"finished too early: {proc.communicate()[1]!r}"
    return proc


def test_a_driver_killed_mid_run_is_finished_by_the_next_run(tmp_path: Path) -> None:
    hashes = make_pngs(tmp_path / "in", 40, size=128)
    out = tmp_path / "out"
    proc = _ray_sort_under_way(tmp_path / "in", out, 6)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    placed_before = done_count(out)
    assert placed_before < 40
    result = run_sort(tmp_path / "in", out, SortOptions(min_age=0, engine="ray"))
    assert result.counts["already_done"] >= placed_before - 2  # the journal, not a redo
    assert_complete(out, hashes, "copy")  # every input exactly once, nothing pending


def test_engine_ray_without_ray_exits_2_naming_the_extra(tmp_path: Path) -> None:
    script = ("import sys\n"
              "sys.modules['ray'] = None  # as if not installed\n"
              "import importlib.util\n"
              "real = importlib.util.find_spec\n"
              "importlib.util.find_spec = lambda n, *a: None if n == 'ray' else real(n, *a)\n"
              "from xreg.cli import app\n"
              "sys.argv = ['xreg', 'sort', sys.argv[1], sys.argv[2], '--engine', 'ray']\n"
              "app()\n")
    (tmp_path / "in").mkdir()
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "in"),
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert 'pip install "xreg[ray]"' in done.stderr
    assert not (tmp_path / "out").exists()  # refused before any work


def test_a_worker_killed_mid_run_is_retried_and_the_run_finishes(tmp_path: Path) -> None:
    hashes = make_pngs(tmp_path / "in", 40, size=128)
    out = tmp_path / "out"
    proc = _ray_sort_under_way(tmp_path / "in", out, 4)
    try:
        # The model actor (Ray names its process after the map operator).
        killed = subprocess.run(["pkill", "-9", "-f", "ray::MapWorker"], check=False)
        assert killed.returncode == 0, "no Ray worker process to kill"
        code = proc.wait(timeout=240)
        assert code == 0, proc.stderr.read()[-2000:] if proc.stderr else code
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert_complete(out, hashes, "copy")  # every input exactly once, nothing pending
