"""benchmarks/label_efficiency.py runs end to end on phantom sites (the real curve is
measured on ../shared/data; this keeps the script working)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")


def test_label_efficiency_script_runs_on_phantom_sites(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "label_efficiency.py"
    spec = importlib.util.spec_from_file_location("label_efficiency", script)
    assert spec is not None and spec.loader is not None
    le = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(le)
    out = tmp_path / "curve.json"
    plot = tmp_path / "curve.png"
    assert le.main(["--tiny", str(tmp_path / "work"), "--ks", "0,8", "--variants",
                    "default,adabn", "--threads", "1", "--json", str(out), "--plot",
                    str(plot)]) == 0
    sites = json.loads(out.read_text())["sites"]
    assert [s["site"] for s in sites] == ["alpha", "beta"]
    for site in sites:
        rows = {(r["k"], r["variant"]): r for r in site["rows"]}
        assert set(rows) == {(0, "base"), (8, "default"), (8, "adabn")}
        base = rows[(0, "base")]["rest"]
        assert base["films"] == site["films"]  # nothing reviewed: the whole site is the rest
        for key in ((8, "default"), (8, "adabn")):
            row = rows[key]
            assert "error" in row or row["rest"]["films"] < base["films"]
            assert "error" in row or row["accepted"] in (True, False)
    assert plot.stat().st_size > 0
    assert "rest correct" in capsys.readouterr().out
