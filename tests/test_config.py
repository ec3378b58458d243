"""Sort options: defaults < YAML file < command line, with named errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from xreg.config import SortOptions, load_sort_options
from xreg.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def test_shipped_config_matches_built_in_defaults():
    assert load_sort_options(REPO / "configs" / "sort.yaml", {}) == SortOptions()


def test_command_line_beats_file(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sort:\n  mode: move\n  batch_size: 4\n  weights: ~/w.pt\n")
    opts = load_sort_options(cfg, {"batch_size": 32, "mode": None})
    assert opts.mode == "move" and opts.batch_size == 32
    assert opts.weights == Path("~/w.pt").expanduser()


@pytest.mark.parametrize("text,match", [
    ("sort:\n  colour: blue\n", "unknown sort option.*colour"),
    ("sort:\n  mode: shred\n", "mode must be one of"),
    ("sort:\n  batch_size: 0\n", "batch_size"),
    ("sort:\n  min_confidence: 2\n", "min_confidence"),
    ("sort:\n  layout: ../{name}\n", "layout"),
    ("- a\n- b\n", "mapping"),
    ("sort: [1, 2]\n", "'sort' must be a mapping"),
    ("sort: {mode: [unclosed\n", "cannot read config"),
])
def test_bad_config_names_the_problem(tmp_path, text, match):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_sort_options(cfg, {})
