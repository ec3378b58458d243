"""xreg adapt keeps what the base knew: the shipped replay, the forgetting verdict, the
stratified hold-out, sources' labels.csv, and nothing left in the temp directory."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("torch")

from tests.test_adapt import _base, _site, _stripes, kill_while_training  # noqa: E402
from xreg.cli import app  # noqa: E402
from xreg.model.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from xreg.model.models import BODY_PARTS  # noqa: E402
from xreg.train.adapt import AdaptOptions, Film, adapt, group_split, site_films  # noqa: E402
from xreg.train.adapt_split import split_notes  # noqa: E402

runner = CliRunner()
QUICK = dict(head_steps=60, workers=1, views=2)


def _checks(path: Path, seed: int) -> None:
    """A third look (ankle): a checkerboard of mid grey, unlike either stripe film."""
    rng = np.random.default_rng(seed)
    cells = ((np.arange(64)[:, None] // 8 + np.arange(64)[None, :] // 8) % 2)
    img = cells.astype(np.float32) * 0.5 + 0.25 + rng.random((64, 64)) * 0.1
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((img * 255).astype(np.uint8)).save(path)
    old = time.time() - 3600
    os.utime(path, (old, old))


def _known(tmp_path: Path, n: int = 12) -> list[Film]:
    films = []
    for i in range(n):
        for cls in ("hip", "knee", "ankle"):
            path = tmp_path / "known" / f"{cls}{i}.png"
            if cls == "ankle":
                _checks(path, 500 + i)
            else:
                _stripes(path, cls == "hip", seed=700 + i)
            films.append(Film(path, (cls,), group=f"k{i}"))
    return films


def _replay_base(tmp_path: Path) -> Path:
    """A small base that knows hip, knee and ankle, with its replay file beside it."""
    from xreg.train.adapt_heads import Labelled, site_features, train_heads
    from xreg.train.finetune import decode_grey
    from xreg.train.replay import replay_from_grey, replay_path, save_replay

    path = _base(tmp_path, "knee")
    loaded = load_checkpoint(path)
    card = loaded.card
    films = _known(tmp_path)
    grey, _ = decode_grey([f.path for f in films], card.input_size)
    feats = site_features(loaded.model, card, grey)[0]
    train_heads(loaded.model, Labelled.of_films(feats, films, BODY_PARTS),
                AdaptOptions(head_steps=200, anchor=0.0, distill=0.0, lr=3e-2))
    n = len(films)
    replay = replay_from_grey(loaded.model, card, grey, [f.truth or () for f in films],
                              [None] * n, [None] * n, ["known"] * n,
                              [i % 2 == 1 for i in range(n)])
    target = replay_path(path)
    sha = save_replay(target, replay)
    save_checkpoint(path, loaded.model, dataclasses.replace(
        card, replay={"file": target.name, "sha256": sha, **replay.summary()}))
    return path


@pytest.fixture(scope="module")
def replay_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _replay_base(tmp_path_factory.mktemp("replay-base"))


def test_the_shipped_replay_keeps_what_the_base_knew(tmp_path: Path, replay_base: Path
                                                      ) -> None:
    from xreg.train.adapt_heads import answer
    from xreg.train.adapt_result import holdout_figures
    from xreg.train.replay import shipped_replay

    base = load_checkpoint(replay_base)
    out = _site(tmp_path, replay_base)  # hips and knees reviewed; no ankle
    reviewed, unreviewed = site_films(out, BODY_PARTS)
    kept = adapt(base, reviewed, unreviewed, AdaptOptions(**QUICK, lr=3e-2))
    assert kept.counts["replay_shipped"] and kept.counts["replay"] == 18
    assert kept.forgetting is not None
    loose = adapt(base, reviewed, unreviewed,
                  AdaptOptions(**QUICK, lr=3e-2, replay=False, phantoms=0))
    assert loose.forgetting is None and loose.counts["replay"] == 0
    assert "forgetting not measured" in loose.verdict
    assert "forgetting not measured" not in kept.verdict
    held = shipped_replay(base.card, base.path)
    assert held is not None
    held = held.take(held.holdout)
    truth = held.truth_sets()

    def correct(model: object, card: object) -> float:
        fig = holdout_figures(card, answer(model, held.member_features()), truth)  # type: ignore[arg-type]
        return float(fig["correct_folder"])

    base_known = correct(base.model, base.card)
    with_replay = correct(kept.loaded.model, kept.loaded.card)
    without = correct(loose.loaded.model, loose.loaded.card)
    assert base_known > 0.9
    assert with_replay > without  # replay keeps the knees and ankles the reviews never named
    assert kept.forgetting["before"]["correct_folder"] == pytest.approx(base_known)


def test_forgetting_is_refused_unless_forced(tmp_path: Path, replay_base: Path) -> None:
    # The reviewer calls checkerboards (the base's ankles) hips: learning that forgets.
    src = tmp_path / "in"
    for p in range(6):
        for k in range(4):
            _checks(src / f"p{p}" / f"f{k}.png", seed=p * 10 + k)
    from xreg.config import SortOptions
    from xreg.registry import Registry
    from xreg.registry.reviews import Review, add_review
    from xreg.sort.runner import run_sort

    out = tmp_path / "out"
    run_sort(src, out, SortOptions(weights=replay_base, min_age=0))
    with Registry(out / "registry.sqlite") as reg:
        for row in reg.iter_images():
            add_review(reg, Review(row["sha256"], "dr test", "hip"), BODY_PARTS)
    target = tmp_path / "site.pt"
    args = ["adapt", str(out), "--weights", str(replay_base), "--out", str(target),
            "--steps", "120", "--threads", "1", "--lr", "3e-2"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert not summary["accepted"] and "forgets" in summary["verdict"]
    assert summary["forgetting"]["correct_drop"] > 0.02
    assert not list(tmp_path.glob("site.*")) and not list(tmp_path.glob(".site*"))
    assert not list(tmp_path.glob("site.*")) and not list(tmp_path.glob(".site*"))
    forced = runner.invoke(app, [*args, "--force"])
    assert forced.exit_code == 0, forced.output
    card = load_checkpoint(target).card
    assert card.metrics["forgetting"]["correct_drop"] > 0.02
    assert card.metrics["holdout"]["after"]["films"] > 0
    assert "Films the base knew" in target.with_suffix(".md").read_text()


def test_a_damaged_replay_file_is_refused(tmp_path: Path, replay_base: Path) -> None:
    import shutil

    from xreg.train.replay import replay_path

    copy = tmp_path / "base.pt"  # its card still names the original's replay file
    shutil.copyfile(replay_base, copy)
    data = bytearray(replay_path(replay_base).read_bytes())
    data[len(data) // 2] ^= 0xFF
    beside = copy.parent / load_checkpoint(copy).card.replay["file"]  # the card names it
    beside.write_bytes(bytes(data))
    out = _site(tmp_path, replay_base)
    result = runner.invoke(app, ["adapt", str(out), "--weights", str(copy), "--out",
                                 str(tmp_path / "site.pt"), "--steps", "5", "--threads", "1"])
    assert result.exit_code == 2, result.output
    assert "sha256" in result.output
    beside.unlink()
    missing = runner.invoke(app, ["adapt", str(out), "--weights", str(copy), "--out",
                                  str(tmp_path / "site.pt"), "--steps", "5"])
    assert missing.exit_code == 2 and "missing" in missing.output


def test_the_split_is_stratified_by_class_and_says_what_it_cannot_judge() -> None:
    films = [Film(Path(f"/x/{g}/{i}.png"), ("hip",), group=f"h{g}")
             for g in range(12) for i in range(3)]
    films += [Film(Path(f"/y/{g}.png"), ("elbow",), group=f"e{g}") for g in range(2)]
    films += [Film(Path("/z/0.png"), ("wrist",), group="w0")]
    for seed in range(5):
        train, held = group_split(films, 0.25, seed)
        assert {films[i].group for i in train}.isdisjoint({films[i].group for i in held})
        assert "elbow" in {films[i].truth[0] for i in held}  # type: ignore[index]
        assert "elbow" in {films[i].truth[0] for i in train}  # type: ignore[index]
        assert "wrist" in {films[i].truth[0] for i in train}  # type: ignore[index]
        notes = split_notes(films, train, held)
        assert any("no wrist" in n and "another patient" in n for n in notes), notes


def test_a_sources_labels_csv_with_oblique_views_is_replay_data(tmp_path: Path,
                                                                 replay_base: Path) -> None:
    source = tmp_path / "source"
    rows = ["path,body_part,label_sure,label_alt,instrument,fracture,view,patient_id,dup_of"]
    for i in range(8):
        _stripes(source / "images" / f"a{i}.png", i % 2 == 0, seed=900 + i)
        rows.append(f"images/a{i}.png,{'hip' if i % 2 == 0 else 'knee'},1,,,,"
                    f"{'oblique' if i % 3 else 'lateral|oblique'},pat-{i},")
    (source / "labels.csv").write_text("\n".join(rows) + "\n")
    out = _site(tmp_path, replay_base)
    target = tmp_path / "site.pt"
    result = runner.invoke(app, ["adapt", str(out), "--weights", str(replay_base), "--out",
                                 str(target), "--replay-data", str(source / "labels.csv"),
                                 "--steps", "20", "--threads", "1", "--json", "--force"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["counts"]["replay"] > 18  # the shipped 18 and the source's films


def test_a_hesitant_label_in_a_sources_labels_csv_is_a_set(tmp_path: Path) -> None:
    from xreg.datasets import load_labels
    from xreg.model.labels import EXTENDED_BODY_PARTS

    rows = ["path,body_part,label_sure,label_alt,instrument,fracture,view,patient_id,dup_of",
            "a.png,hand,0,wrist,0,0,oblique,p1,", "b.png,hand,0,unclear,0,0,,p2,",
            "c.png,hand,1,wrist,0,0,,p3,", "d.png,chest,0,knee,0,0,frontal,p4,"]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    sets = [im.body_parts for im in load_labels(tmp_path / "labels.csv", EXTENDED_BODY_PARTS,
                                                lenient=True)]
    assert sets == [("hand", "wrist"), ("hand",), ("hand",), ("other", "knee")]


#: ONNX Runtime's telemetry SDK writes ``$TMPDIR/.ses`` (a session id) whenever it is
#: imported, by any program; one small file, rewritten, never a folder. Not adapt's.
_NOT_OURS = {".ses"}


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in _NOT_OURS)


def test_no_temporary_folder_remains_after_kept_refused_or_killed_adapt(
        tmp_path: Path, replay_base: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "COLUMNS": "200", "TMPDIR": str(tmp)}
    out = _site(tmp_path, replay_base)
    target = tmp_path / "site.pt"
    base_args = [sys.executable, "-m", "xreg", "adapt", str(out), "--weights",
                 str(replay_base), "--out", str(target), "--threads", "1"]
    kept = subprocess.run([*base_args, "--steps", "10", "--force"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert kept.returncode == 0, kept.stderr
    assert _leftovers(tmp) == []
    refused = subprocess.run([*base_args, "--steps", "10", "--lr", "1e4", "--no-replay"],
                             env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode in (0, 1), refused.stderr
    assert _leftovers(tmp) == []
    for written in tmp_path.glob("site.*"):  # what the kept run wrote
        written.unlink()
    # killed once training (phantoms rendered, in memory)
    kill_while_training([*base_args, "--steps", "1000000", "--no-replay"], env)
    assert _leftovers(tmp) == []
    assert not list(tmp_path.glob("site.*")) and not list(tmp_path.glob(".site*"))


def test_films_unlike_every_reviewed_one_are_counted() -> None:
    import torch

    from xreg.train.adapt_split import unlike_reviewed

    gen = torch.Generator().manual_seed(0)

    def around(centre: int, n: int) -> torch.Tensor:
        x = torch.zeros(n, 16)
        x[:, centre] = 1.0
        x = x + 0.05 * torch.randn(n, 16, generator=gen)
        return x / x.norm(dim=1, keepdim=True)

    reviewed = torch.cat([around(0, 20), around(1, 20)])
    groups = [f"g{i // 2}" for i in range(40)]
    alike = unlike_reviewed(reviewed, groups, torch.cat([around(0, 30), around(1, 30)]))
    apart = unlike_reviewed(reviewed, groups, torch.cat([around(0, 15), around(2, 45)]))
    assert alike is not None and apart is not None
    assert alike < 0.2 and apart >= 0.75 - 1e-6
    assert unlike_reviewed(reviewed, groups, around(0, 5)) is None  # too few to say


def test_reviews_that_do_not_represent_the_site_are_refused() -> None:
    from xreg.train.adapt_result import UNLIKE_MAX, judge

    fig = {"films": 10, "correct": 8, "wrong": 0, "review": 2, "correct_folder": 0.8,
           "wrong_folder": 0.0, "review_rate": 0.2, "utility": 8.0}
    base = {**fig, "correct": 0, "review": 10, "utility": 0.0}
    kept, _ = judge(base, fig, None, UNLIKE_MAX - 0.01)
    refused, why = judge(base, fig, None, 0.6)
    assert kept and not refused
    assert "do not represent the site" in why and "60%" in why and "uniform sample" in why


def _smooth(path: Path, radial: bool, seed: int) -> None:
    """A film with no bars: flat grey or a bright centre fading out (little noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    img = (1 - np.hypot(yy - 0.5, xx - 0.5) * 1.4) if radial else np.full((64, 64), 0.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(img + rng.random((64, 64)) * 0.05, 0, 1) * 255)
                    .astype(np.uint8)).save(path)


def test_adapt_refuses_reviews_that_leave_a_look_of_the_site_out(tmp_path: Path,
                                                                   replay_base: Path) -> None:
    """Reviews of smooth films only, at a site whose other films are striped: refused as
    not representing the site; the same reviews among smooth films pass that check."""
    base = load_checkpoint(replay_base)
    site = tmp_path / "site"
    reviewed = []
    for i in range(16):
        _smooth(site / f"r{i}.png", i % 2 == 1, seed=2000 + i)
        reviewed.append(Film(site / f"r{i}.png", ("hip" if i % 2 == 0 else "knee",),
                             group=f"p{i // 2}"))
    striped, smooth = [], []
    for i in range(24):
        _stripes(site / f"s{i}.png", i % 2 == 0, seed=4000 + i)
        striped.append(Film(site / f"s{i}.png", group="rest"))
        _smooth(site / f"m{i}.png", i % 2 == 1, seed=5000 + i)
        smooth.append(Film(site / f"m{i}.png", group="rest"))
    biased = adapt(base, reviewed, striped, AdaptOptions(**QUICK, lr=3e-2))
    fair = adapt(base, reviewed, smooth, AdaptOptions(**QUICK, lr=3e-2))
    assert biased.counts["unlike_reviewed"] > 0.3 and not biased.accepted
    assert "do not represent the site" in biased.verdict
    assert fair.counts["unlike_reviewed"] <= 0.3
    assert "do not represent" not in fair.verdict
