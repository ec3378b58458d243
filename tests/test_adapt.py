"""xreg adapt: reviews teach, the base is kept, a worse model is never written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("torch")

from tests.conftest import biased_checkpoint  # noqa: E402
from xreg.cli import app  # noqa: E402
from xreg.config import SortOptions  # noqa: E402
from xreg.model.checkpoint import load_checkpoint  # noqa: E402
from xreg.model.models import BODY_PARTS  # noqa: E402
from xreg.registry import Registry  # noqa: E402
from xreg.registry.reviews import Review, add_review  # noqa: E402
from xreg.sort.runner import run_sort  # noqa: E402
from xreg.train import adapt_images  # noqa: E402
from xreg.train.adapt import AdaptOptions, Film, adapt, group_split, site_films  # noqa: E402

runner = CliRunner()
# The whole network: the tests' base is a random backbone, whose features only a
# full fine-tune bends towards the films (the shipped model's are already good).
FAST = dict(lr=3e-3, layers="all", min_steps=40, max_steps=40, head_steps=40, epochs=1,
            batch_size=8, workers=1, phantoms=20)


def _stripes(path: Path, horizontal: bool, seed: int) -> None:
    """A film the tests' classes tell apart: bright with horizontal bars (hip) or dark
    with vertical ones (knee); even an untrained backbone sees the difference."""
    rng = np.random.default_rng(seed)
    bars = (np.arange(64) // 8 % 2).astype(np.float32)
    img = np.tile(bars[:, None] if horizontal else bars[None, :], (1, 64) if horizontal
                  else (64, 1))
    img = img * 0.3 + rng.random((64, 64)) * 0.2 + (0.5 if horizontal else 0.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((img * 255).astype(np.uint8)).save(path)
    old = time.time() - 3600
    os.utime(path, (old, old))


def _base(tmp_path: Path, top: str) -> Path:
    """A base that calls every film ``top`` but whose backbone sees the films.

    The biased test checkpoint has a random backbone whose batch-norm
    statistics flatten every film to the same features; statistics measured
    on films like the tests' (AdaBN) make it a base as a trained one is.
    """
    from xreg.model.checkpoint import save_checkpoint
    from xreg.train.finetune import adabn, decode_grey

    path = biased_checkpoint(tmp_path / f"{top}.pt", BODY_PARTS, top, margin=3.0)
    films = tmp_path / "calibration"
    for i in range(16):
        _stripes(films / f"c{i}.png", i % 2 == 0, seed=10_000 + i)
    loaded = load_checkpoint(path)
    grey, _ = decode_grey(sorted(films.glob("*.png")), loaded.card.input_size)
    adabn(loaded.model, grey, loaded.card)
    save_checkpoint(path, loaded.model, loaded.card)
    return path


def _site(tmp_path: Path, base: Path, n_patients: int = 8, per_patient: int = 4,
          review: bool = True, say: str | None = None) -> Path:
    """Films of ``n_patients`` folders, half hip half knee, sorted by ``base`` and reviewed.

    ``say`` overrides every review's body part (a reviewer who knows better than
    the films)."""
    src = tmp_path / "in"
    truth: dict[str, str] = {}
    for p in range(n_patients):
        for k in range(per_patient):
            hip = (p * per_patient + k) % 2 == 0
            path = src / f"p{p}" / f"f{k}.png"
            _stripes(path, hip, seed=p * 100 + k)
            truth[path.name + str(p)] = "hip" if hip else "knee"
    out = tmp_path / "out"
    run_sort(src, out, SortOptions(weights=base, min_age=0))
    if review:
        with Registry(out / "registry.sqlite") as reg:
            for row in reg.iter_images():
                source = Path(row["source_paths"][0])
                label = say or truth[source.name + source.parent.name[1:]]
                add_review(reg, Review(row["sha256"], "dr test", label, instrument=1),
                           BODY_PARTS)
    return out


def test_group_split_keeps_each_group_on_one_side() -> None:
    films = [Film(Path(f"/x/{g}/{i}.png"), ("hip",), group=f"g{g}")
             for g in range(10) for i in range(3)]
    train, held = group_split(films, 0.25, seed=1)
    assert sorted(train + held) == list(range(30)) and held and train
    assert {films[i].group for i in train}.isdisjoint({films[i].group for i in held})
    with pytest.raises(Exception, match="at least two"):
        group_split([Film(Path("/a.png"), ("hip",), group="one")] * 3, 0.25)


def test_adapt_learns_a_class_the_base_got_wrong(tmp_path: Path) -> None:
    base_path = _base(tmp_path, "knee")
    out = _site(tmp_path, base_path)
    base = load_checkpoint(base_path)
    reviewed, unreviewed = site_films(out, BODY_PARTS)
    assert len(reviewed) == 32 and not unreviewed
    assert len({f.group for f in reviewed}) == 8  # one group per patient folder
    result = adapt(base, reviewed, unreviewed, AdaptOptions(**FAST))
    assert result.before["correct"] < result.before["nine"]  # the base calls hips knee
    assert result.after["correct"] > result.before["correct"]
    assert result.after["wrong"] < result.before["wrong"]
    assert result.accepted, result.verdict
    assert result.counts["per_class"] == {"hip": 16, "knee": 16}
    assert result.counts["reviewers"] == ["dr test"]


def test_unconfirmed_model_labels_never_enter_training(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base_path = _base(tmp_path, "knee")
    out = _site(tmp_path, base_path, review=False)
    with Registry(out / "registry.sqlite") as reg:
        rows = sorted(reg.iter_images(), key=lambda r: r["sha256"])
        chosen = {r["sha256"] for r in rows[::2]}  # review half; instrument not judged
        for sha in chosen:
            add_review(reg, Review(sha, "dr test", "hip"), BODY_PARTS)
        dest = {r["sha256"]: r["dest_path"] for r in rows}
    reviewed, unreviewed = site_films(out, BODY_PARTS)
    assert {f.path for f in reviewed} == {out / dest[s] for s in chosen}
    assert all(f.truth == ("hip",) and f.instrument is None for f in reviewed)
    assert all(f.truth is None for f in unreviewed) and len(unreviewed) == 16
    seen: list[list[Film]] = []
    real = adapt_images.fine_tune

    def spy(model, card, grey, films, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(list(films))
        return real(model, card, grey, films, *args, **kwargs)

    monkeypatch.setattr(adapt_images, "fine_tune", spy)
    adapt(load_checkpoint(base_path), reviewed, unreviewed, AdaptOptions(**FAST))
    trained = seen[0]
    assert trained and {f.path for f in trained} <= {f.path for f in reviewed}
    assert all(f.truth == ("hip",) and f.instrument is None for f in trained)


def test_set_reviews_train_as_sets(tmp_path: Path) -> None:
    from xreg.registry.reviews import NOT_MSK
    from xreg.train.adapt_split import _truth

    assert _truth("hand|wrist", BODY_PARTS, NOT_MSK) == ("hand", "wrist")
    assert _truth(NOT_MSK, BODY_PARTS, NOT_MSK) is None  # a nine-class head cannot learn it
    assert _truth(NOT_MSK, (*BODY_PARTS, "other"), NOT_MSK) == ("other",)
    with pytest.raises(Exception, match="cannot learn"):
        _truth("skull", BODY_PARTS, NOT_MSK)
    import torch

    from xreg.train.finetune import set_loss

    logits = torch.tensor([[0.0, 5.0, 5.0]])
    either = torch.tensor([[False, True, True]])
    only_first = torch.tensor([[True, False, False]])
    assert float(set_loss(logits, either)) < 0.01 < float(set_loss(logits, only_first))


def test_cli_writes_checkpoint_onnx_and_card_then_sort_uses_it(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    base_path = _base(tmp_path, "knee")
    out = _site(tmp_path, base_path)
    target = tmp_path / "site.pt"
    result = runner.invoke(app, ["adapt", str(out), "--weights", str(base_path), "--out",
                                 str(target), "--layers", "all", "--lr", "3e-3",
                                 "--steps", "40", "--phantoms", "20",
                                 "--threads", "1", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["accepted"] and summary["written"]["checkpoint"] == str(target)
    card = load_checkpoint(target).card
    base_sha = load_checkpoint(base_path).sha256
    assert card.training["adapted_from"]["sha256"] == base_sha
    assert card.training["reviewed"]["per_class"] == {"hip": 16, "knee": 16}
    assert card.training["reviewed"]["reviewers"] == ["dr test"]
    assert card.metrics["holdout"]["after"]["films"] == summary["holdout"]["after"]["films"]
    assert "tuned to one site" in card.notes.lower()
    assert target.with_suffix(".onnx").is_file()
    text = target.with_suffix(".md").read_text()
    assert base_sha in text and "tuned to one site" in text
    again = tmp_path / "again"
    run_sort(tmp_path / "in", again, SortOptions(weights=target, min_age=0))
    with Registry(again / "registry.sqlite", readonly=True) as reg:
        shas = {r["model_sha256"] for r in reg.iter_images()}
    assert shas == {summary["written"]["sha256"]}


def test_a_worse_model_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    # The base is right about every film; a wild learning rate can only spoil it.
    base_path = _base(tmp_path, "hip")
    out = _site(tmp_path, base_path, say="hip")
    target = tmp_path / "site.pt"
    args = ["adapt", str(out), "--weights", str(base_path), "--out", str(target),
            "--layers", "all", "--lr", "50", "--steps", "20", "--threads", "1",
            "--phantoms", "20"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "refused" in result.output and "not written" in result.output
    assert not target.exists() and not target.with_suffix(".onnx").exists()
    assert not list(tmp_path.glob(".site.pt*"))
    forced = runner.invoke(app, [*args, "--force"])
    assert forced.exit_code == 0, forced.output
    assert target.is_file()


def kill_while_training(args: list[str], env: dict[str, str]) -> None:
    """Start ``xreg adapt``, SIGKILL it a second after it says it is training."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    assert proc.stderr is not None
    deadline = time.time() + 120
    for line in proc.stderr:
        if "training" in line or time.time() > deadline:
            break
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def test_sigkill_during_adapt_leaves_no_weights_file(tmp_path: Path) -> None:
    base_path = _base(tmp_path, "knee")
    out = _site(tmp_path, base_path)
    target = tmp_path / "site.pt"
    # Phantoms are rendered in memory: a killed adapt leaves nothing in the temp folder.
    (tmp_path / "tmp").mkdir()
    kill_while_training(
        [sys.executable, "-m", "xreg", "adapt", str(out), "--weights", str(base_path),
         "--out", str(target), "--steps", "100000", "--threads", "1", "--phantoms", "20"],
        {**os.environ, "COLUMNS": "200", "TMPDIR": str(tmp_path / "tmp")})
    assert not target.exists() and not target.with_suffix(".onnx").exists()
    assert not target.with_suffix(".md").exists()
    assert not list((tmp_path / "tmp").iterdir())


def _ensemble_base(tmp_path: Path, top: str, bank: bool) -> Path:
    """Two copies of the test base as one ensemble, with or without a feature bank."""
    import dataclasses

    import torch

    from xreg.model.checkpoint import save_checkpoint
    from xreg.train.guard import ensemble_card, join_loaded

    one = load_checkpoint(_base(tmp_path, top))
    net = join_loaded([one, one])
    card = ensemble_card([one, one], "ens")
    guard = {"energy_max": 1e6, "agree_min": 0.0}
    if bank:
        with torch.no_grad():
            _, joined = net.features(torch.randn(8, 3, card.input_size, card.input_size))
        net.set_bank(joined, 2)
        guard.update(distance_max=2.0, bank={"films": 8, "dim": int(joined.shape[1]), "k": 2})
    save_checkpoint(tmp_path / "ens.pt", net, dataclasses.replace(card, guard=guard))
    return tmp_path / "ens.pt"


def test_an_ensemble_base_adapts_its_heads_and_keeps_its_guard(tmp_path: Path) -> None:
    base_path = _ensemble_base(tmp_path, "knee", bank=True)
    out = _site(tmp_path, base_path)
    base = load_checkpoint(base_path)
    reviewed, unreviewed = site_films(out, BODY_PARTS)
    with pytest.raises(Exception, match="feature bank"):
        adapt(base, reviewed, unreviewed, AdaptOptions(**{**FAST, "layers": "all"}))
    result = adapt(base, reviewed, unreviewed, AdaptOptions(**{**FAST, "layers": "heads"}))
    assert result.after["utility"] >= result.before["utility"], result.verdict
    card = result.loaded.card
    assert card.members == base.card.members
    # the reviewed films joined the bank; the guard is never looser than the base's
    assert card.guard["bank"] == {**base.card.guard["bank"], "films": 8 + len(reviewed)}
    assert card.guard["agree_min"] >= 0.0
    assert card.guard["distance_max"] <= base.card.guard["distance_max"]
    # the features the bank was built from are untouched: only heads trained
    changed = set()
    for (name, before), after in zip(base.model.state_dict().items(),
                                     result.loaded.model.state_dict().values()):
        if name == "bank":
            continue
        if ".heads." not in name and before.dtype.is_floating_point:
            assert (before == after).all(), name
        elif before.dtype.is_floating_point and not (before == after).all():
            changed.add(name.split(".")[1])
    assert changed == {"0", "1"}  # both members' heads learned
