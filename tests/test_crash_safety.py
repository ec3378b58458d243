"""A run killed at any moment loses nothing; the next run finishes the job."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.conftest import make_old, sha256_of
from xreg.cli import app
from xreg.registry import ImageRecord, Registry
from xreg.sort.placement import TEMP_PREFIX, temp_path

runner = CliRunner()


def make_pngs(folder: Path, n: int, size: int = 256) -> dict[Path, str]:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    out = {}
    for i in range(n):
        p = folder / f"img_{i:03d}.png"
        Image.fromarray((rng.random((size, size)) * 65535).astype(np.uint16)).save(p)
        make_old(p)
        out[p] = sha256_of(p)
    return out


def done_count(out_dir: Path) -> int:
    try:
        with sqlite3.connect(f"file:{out_dir / 'registry.sqlite'}?mode=ro", uri=True) as db:
            return db.execute("SELECT COUNT(*) FROM images WHERE state='done'").fetchone()[0]
    except sqlite3.Error:
        return 0


def assert_complete(out_dir: Path, hashes: dict[Path, str], mode: str) -> None:
    placed: dict[str, list[Path]] = {}
    for p in out_dir.rglob("*"):
        assert not p.name.startswith(TEMP_PREFIX), f"temp file left: {p}"
        if p.is_file() and not p.name.startswith(("registry.sqlite", ".xreg")):
            placed.setdefault(sha256_of(p), []).append(p)
    for src, sha in hashes.items():
        assert len(placed.get(sha, [])) == 1, f"{src.name} placed {len(placed.get(sha, []))}x"
        if mode == "move":
            assert not src.exists()
        else:
            assert src.exists() and sha256_of(src) == sha
    with sqlite3.connect(out_dir / "registry.sqlite") as db:
        rows = dict(db.execute("SELECT sha256, dest_path FROM images WHERE state='done'"))
        assert db.execute("SELECT COUNT(*) FROM images WHERE state!='done'").fetchone()[0] == 0
    assert set(rows) == set(hashes.values())
    for sha, dest in rows.items():
        assert sha256_of(out_dir / dest) == sha


@pytest.mark.parametrize("mode,kill_after", [("move", 1), ("copy", 12), ("move", 25)])
def test_sigkill_mid_run_then_rerun_completes(tmp_path, tiny_weights, mode, kill_after):
    hashes = make_pngs(tmp_path / "in", 40)
    out_dir = tmp_path / "out"
    cmd = [sys.executable, "-m", "xreg", "sort", str(tmp_path / "in"), str(out_dir),
           "--weights", str(tiny_weights), "--min-age", "0", "--min-confidence", "0",
           "--mode", mode, "--batch-size", "1", "--workers", "1", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while done_count(out_dir) < kill_after and proc.poll() is None:
        assert time.monotonic() < deadline, "sort never got going"
        time.sleep(0.005)
    assert proc.poll() is None, f"run finished before the kill: {proc.stderr.read()!r}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = done_count(out_dir)
    assert killed_at < len(hashes)

    result = runner.invoke(app, cmd[3:-1] + ["--json"])
    assert result.exit_code == 0, result.output
    counts = json.loads(result.output)["counts"]
    assert counts["failed"] == 0
    assert_complete(out_dir, hashes, mode)


def test_killed_after_temp_write_is_cleaned_and_redone(tmp_path, tiny_weights):
    """Kill window: journalled, temp file half written, nothing placed."""
    hashes = make_pngs(tmp_path / "in", 2, size=32)
    out_dir = tmp_path / "out"
    src, sha = next(iter(hashes.items()))
    with Registry(out_dir / "registry.sqlite") as reg:
        run = reg.start_run(xreg_version="t", input_root="", output_root="", model_path="",
                            model_name="", model_sha256="", options={})
        reg.begin_images(run, [ImageRecord(sha, 1, "sorted", "hand/no_instrument/x.png",
                                           "copy", str(src), 0, {})])
    tmp = temp_path(out_dir / "hand/no_instrument/x.png", sha)
    tmp.parent.mkdir(parents=True)
    tmp.write_bytes(b"half a fi")
    result = runner.invoke(app, ["sort", str(tmp_path / "in"), str(out_dir), "--weights",
                                 str(tiny_weights), "--min-age", "0", "--min-confidence", "0"])
    assert result.exit_code == 0, result.output
    assert not tmp.exists()
    assert_complete(out_dir, hashes, "copy")


def test_killed_after_placement_before_commit_is_adopted(tmp_path, tiny_weights):
    """Kill window: file in place, registry row still pending. No second copy."""
    hashes = make_pngs(tmp_path / "in", 2, size=32)
    out_dir = tmp_path / "out"
    src, sha = next(iter(hashes.items()))
    dest = "knee/no_instrument/" + src.name  # where an older model put it
    with Registry(out_dir / "registry.sqlite") as reg:
        run = reg.start_run(xreg_version="t", input_root="", output_root="", model_path="",
                            model_name="", model_sha256="", options={})
        reg.begin_images(run, [ImageRecord(sha, src.stat().st_size, "sorted", dest, "move",
                                           str(src), src.stat().st_mtime_ns, {})])
    (out_dir / dest).parent.mkdir(parents=True)
    (out_dir / dest).write_bytes(src.read_bytes())
    result = runner.invoke(app, ["sort", str(tmp_path / "in"), str(out_dir), "--weights",
                                 str(tiny_weights), "--min-age", "0", "--min-confidence", "0",
                                 "--mode", "move", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["recovered"] == 1
    assert (out_dir / dest).exists()
    assert_complete(out_dir, hashes, "move")


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "xreg", "--version"], capture_output=True,
                         text=True, check=True, env=os.environ | {"COLUMNS": "80"})
    assert out.stdout.startswith("xreg ")
