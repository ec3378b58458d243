"""Multi-source training, set-valued body-part labels, extended classes, masked heads."""

from __future__ import annotations

import csv
import math
from collections import Counter
from pathlib import Path

import pytest
import torch

from xreg.datasets import LabelledImage, load_labels
from xreg.errors import ConfigError
from xreg.model.checkpoint import load_checkpoint
from xreg.model.models import EXTENDED_BODY_PARTS, INSTRUMENT_HEAD, HeadSpec, build_model
from xreg.synth.generate import generate_dataset
from xreg.train import TrainConfig, load_train_config, train
from xreg.train.config import DataSource
from xreg.train.loop import _losses, set_label_loss
from xreg.train.split import split_groups
from xreg.train.tasks import ImageTask

TINY = dict(arch="mobilenet_v3_small", input_size=64, pretrained="none", lr=2e-3,
            max_epochs=2, milestones=[2], resamples=50, batch_size=16)
HEADS = ["body_part", "instrument", "fracture", "view"]


# ------------------------------------------------------------ partial labels


def test_set_label_loss_is_minus_log_of_the_sets_summed_probability() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.0, 1.0, 0.0, 3.0]])
    members = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    p = torch.softmax(logits, 1)
    by_hand = (-math.log(float(p[0, 0] + p[0, 1])) - math.log(float(p[1, 3]))) / 2
    assert float(set_label_loss(logits, members)) == pytest.approx(by_hand, rel=1e-6)
    # A set of one with smoothing is exactly torch's smoothed cross-entropy;
    # the set of two is not smoothed at all.
    smoothed = set_label_loss(logits[1:], members[1:], 0.1)
    torch_ce = torch.nn.functional.cross_entropy(logits[1:], torch.tensor([3]),
                                                 label_smoothing=0.1)
    assert float(smoothed) == pytest.approx(float(torch_ce), rel=1e-6)
    assert float(set_label_loss(logits[:1], members[:1], 0.1)) == pytest.approx(
        -math.log(float(p[0, 0] + p[0, 1])), rel=1e-6)


def test_primary_weight_leans_towards_the_first_member_inside_the_set() -> None:
    logits = torch.tensor([[1.0, 1.0, 0.0]])
    members = torch.tensor([[1.0, 2.0, 0.0]])  # class 1 is the primary
    p = torch.softmax(logits, 1)[0]
    pure = set_label_loss(logits, members)
    assert float(pure) == pytest.approx(-math.log(float(p[0] + p[1])))
    leaning = set_label_loss(logits, members, primary_weight=0.5)
    assert float(leaning) == pytest.approx(float(pure) - 0.5 * math.log(float(p[1])))
    x = logits.clone().requires_grad_(True)
    set_label_loss(x, members, primary_weight=0.5).backward()
    assert x.grad is not None
    assert float(x.grad[0, 1]) < float(x.grad[0, 0]) and float(x.grad[0, 2]) > 0
    # A sure label (set of one) is unchanged by the weight.
    one = torch.tensor([[0.0, 2.0, 0.0]])
    assert float(set_label_loss(logits, one, primary_weight=0.5)) == pytest.approx(
        float(set_label_loss(logits, one)))


def test_unknown_rows_are_masked() -> None:
    logits = torch.randn(3, 4)
    members = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    assert float(set_label_loss(logits, members)) == pytest.approx(
        float(set_label_loss(logits[:1], members[:1])))
    assert float(set_label_loss(logits, torch.zeros(3, 4))) == 0.0


def test_a_set_label_never_pushes_probability_out_of_the_set() -> None:
    torch.manual_seed(0)
    logits = torch.randn(64, 6, requires_grad=True)
    members = torch.zeros(64, 6)
    for i in range(64):
        members[i, torch.randperm(6)[: 2 + i % 3]] = 1.0
    loss = set_label_loss(logits, members, smoothing=0.1)
    loss.backward()
    grad = logits.grad
    assert grad is not None
    # Descent lowers every outside logit and raises (or keeps) every member's.
    assert bool((grad[members == 0] > 0).all())
    assert bool((grad[members == 1] <= 1e-9).all())
    with torch.no_grad():
        before = (torch.softmax(logits, 1) * (1 - members)).sum(1)
        after = (torch.softmax(logits - 0.5 * grad, 1) * (1 - members)).sum(1)
    assert bool((after < before).all())


def test_a_head_with_no_labels_in_the_batch_gets_no_gradient() -> None:
    heads = (HeadSpec("body_part", EXTENDED_BODY_PARTS), INSTRUMENT_HEAD,
             HeadSpec("fracture", ("no_fracture", "fracture")))
    model = build_model("mobilenet_v3_small", heads, input_size=64)
    x = torch.randn(4, 3, 64, 64)
    bp = torch.zeros(4, len(EXTENDED_BODY_PARTS))
    bp[:, 0] = 1
    targets = {"body_part": bp, "instrument": torch.tensor([0, 1, 0, 1]),
               "fracture": torch.full((4,), -100)}
    _losses(model(x), targets, 0.1).backward()
    frac = model.heads["fracture"][2].weight.grad
    inst = model.heads["instrument"][2].weight.grad
    assert frac is None or float(frac.abs().sum()) == 0.0
    assert inst is not None and float(inst.abs().sum()) > 0


# ------------------------------------------------------------ manifests, groups


def test_manifest_reads_sets_fracture_and_dup_of(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text(
        "path,body_part,instrument,fracture,dup_of\n"
        "a.png,hand|wrist,0,1,\nb.png,forearm,,0,a.png\nc.png,other,1,,\n")
    images = load_labels(tmp_path / "m.csv", EXTENDED_BODY_PARTS)
    a, b, c = images
    assert (a.body_part, a.body_parts, a.fracture) == ("hand", ("hand", "wrist"), 1)
    assert (b.body_parts, b.instrument, b.fracture, b.dup_of) == (("forearm",), None, 0,
                                                                   "a.png")
    assert c.fracture is None and c.body_part == "other"
    (tmp_path / "bad.csv").write_text("path,body_part,instrument\na.png,hand|paw,0\n")
    with pytest.raises(ConfigError, match="row 2.*body_part.*'paw'"):
        load_labels(tmp_path / "bad.csv", EXTENDED_BODY_PARTS)
    with pytest.raises(ConfigError, match="'forearm'"):
        load_labels(tmp_path / "m.csv")  # a nine-class head does not know forearm


def test_split_groups_join_patients_and_duplicate_clusters() -> None:
    def im(name: str, patient: str | None = None, dup: str | None = None) -> LabelledImage:
        return LabelledImage(Path(f"/d/{name}"), "hand", 0, patient, None, dup_of=dup)

    groups = split_groups([im("a.jpg", "p1"), im("b.jpg", "p2", "c.jpg"), im("c.jpg", "p3"),
                           im("d.jpg", "p3"), im("e.jpg", "p4"), im("f.jpg", "p1")])
    # c names no one, but b names c: b, c and (through p3) d are one group.
    assert groups[1] == groups[2] == groups[3]
    assert groups[0] == groups[5] != groups[1]
    assert len({groups[0], groups[1], groups[4]}) == 3


# ------------------------------------------------------------ mixed sources


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 'real' manifest (extended labels, sets, fracture, no view on some rows)
    over phantom images, and a config listing it with phantoms rendered on the fly."""
    root = tmp_path_factory.mktemp("sources")
    generate_dataset(root / "films", 96, seed=11, size=96, instrument_rate=0.3, workers=1)
    rows = list(csv.DictReader((root / "films" / "labels.csv").open()))
    extra = {"hand": "hand|wrist", "knee": "knee|lower_leg", "elbow": "forearm"}
    with (root / "real.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "body_part", "instrument", "fracture", "view", "patient_id",
                    "dup_of"])
        for i, r in enumerate(rows):
            w.writerow([f"films/{r['path']}", extra.get(r["body_part"], r["body_part"]),
                        # A learnable stand-in for fracture: visible hardware.
                        r["instrument"], r["instrument"],
                        r["view"] if i % 2 else "", r["patient_id"], ""])
    (root / "mixed.yaml").write_text(
        "train:\n"
        "  heads: [body_part, instrument, fracture, view]\n"
        "  body_parts: extended\n"
        "  balance_power: 0.5\n"
        "  datasets:\n"
        "    - {name: real, path: real.csv, weight: 0.6}\n"
        "    - {name: ph, synth: {count: 48, seed: 3, out_of_scope: 12, size: 96},"
        " weight: 0.4}\n")
    return root


def test_config_datasets_resolve_against_the_config_file(two_sources: Path) -> None:
    cfg = load_train_config(two_sources / "mixed.yaml")
    real, ph = cfg.datasets
    assert real == DataSource("real", str(two_sources / "real.csv"), 0.6)
    assert ph.synth == {"count": 48, "seed": 3, "out_of_scope": 12, "size": 96}
    assert cfg.to_dict()["datasets"][1] == {"name": "ph", "weight": 0.4, "synth": ph.synth}


def test_sources_are_tagged_weighted_and_masked(two_sources: Path, tmp_path: Path) -> None:
    cfg = load_train_config(two_sources / "mixed.yaml", TINY)
    task = ImageTask(cfg, None, tmp_path / "run")
    sources = Counter(im.source for im in task.images)
    assert sources == {"real": 96, "ph": 60}
    others = [im for im in task.images if im.body_part == "other"]
    assert len(others) == 12 and all(im.source == "ph" for im in others)
    assert all(im.patient_id is None or im.patient_id.startswith(f"{im.source}:")
               for im in task.images)
    members = list(range(len(task)))
    weights = task.sample_weights(members, cfg)
    assert weights is not None
    share = {name: float(sum(weights[i] for i in members if task.images[i].source == name))
             for name in sources}
    assert share["real"] == pytest.approx(0.6) and share["ph"] == pytest.approx(0.4)
    t = task.targets(members)
    assert t["body_part"].shape == (len(task), len(EXTENDED_BODY_PARTS))
    sets = [i for i in members if len(task.images[i].body_parts) == 2]
    assert sets and all(int((t["body_part"][i] > 0).sum()) == 2 for i in sets)
    # The primary label (first member) is marked 2, the other candidates 1.
    labels = EXTENDED_BODY_PARTS
    for i in sets:
        primary, other = task.images[i].body_parts
        assert float(t["body_part"][i, labels.index(primary)]) == 2.0
        assert float(t["body_part"][i, labels.index(other)]) == 1.0
    # Phantoms carry no fracture label outside hip pairs: masked, not "no fracture".
    ph = [i for i in members if task.images[i].source == "ph"]
    assert all(int(t["fracture"][i]) == -100 for i in ph)
    assert any(int(t["view"][i]) == -100 for i in members if task.images[i].source == "real")


def test_mixed_source_training_lowers_every_heads_loss(two_sources: Path,
                                                      tmp_path: Path) -> None:
    cfg = load_train_config(two_sources / "mixed.yaml", {**TINY, "max_epochs": 6,
                                                          "milestones": [6]})
    result = train(cfg, None, tmp_path / "m.pt", workers=1)
    loaded = load_checkpoint(result.checkpoint)
    card = loaded.card
    assert card.head("body_part").labels == EXTENDED_BODY_PARTS
    assert {"instrument", "fracture"} <= set(card.thresholds)
    assert card.training["data"]["datasets"][0]["name"] == "real"
    assert set(card.metrics["test"]["by_source"]) <= {"real", "ph"}
    log = result.log
    assert log[-1].train_loss < log[0].train_loss
    split = list(csv.DictReader((result.run_dir / "split.csv").open()))
    assert {r["source"] for r in split} == {"real", "ph"}
    assert any("|" in r["body_part"] for r in split)
    # Each head's own training loss falls from the untrained model to the trained one.
    task = ImageTask(cfg, None, result.run_dir)
    from xreg.train.data import decode_images

    rows = [i for i, r in enumerate(split) if r["split"] == "train"]
    decoded = decode_images([task.images[i].path for i in rows], cfg.input_size, workers=1)
    x = torch.from_numpy(decoded.pixels).float()
    x = ((x - card.mean) / card.std)[:, None].expand(-1, 3, -1, -1)
    targets = task.targets([rows[k] for k in decoded.kept])
    untrained = build_model(cfg.arch, card.heads, input_size=cfg.input_size)
    torch.manual_seed(0)
    untrained.load_state_dict(_reset_heads(loaded.model.state_dict(), untrained))
    for head in ("body_part", "instrument", "fracture", "view"):
        before = _head_loss(untrained, x, targets, head)
        after = _head_loss(loaded.model, x, targets, head)
        assert after < before, head


def _reset_heads(state: dict[str, torch.Tensor], fresh: torch.nn.Module
                 ) -> dict[str, torch.Tensor]:
    """The trained backbone with untrained heads: isolates what each head learned."""
    own = fresh.state_dict()
    return {k: (own[k] if k.startswith("heads.") else v) for k, v in state.items()}


@torch.no_grad()
def _head_loss(model: torch.nn.Module, x: torch.Tensor,
               targets: dict[str, torch.Tensor], head: str) -> float:
    model.eval()
    logits = model(x)[head]
    y = targets[head]
    if y.ndim == 2:
        return float(set_label_loss(logits, y))
    known = y != -100
    return float(torch.nn.functional.cross_entropy(logits[known], y[known]))


def test_no_data_anywhere_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no training data"):
        train(TrainConfig(**TINY), None, tmp_path / "x.pt")


def test_affine_and_intensity_augmentation_is_seeded_bounded_and_pair_aware() -> None:
    from xreg.model.transforms import augment_batch

    x = torch.rand(6, 2, 32, 32)
    kw = dict(hflip=False, rot90=False, rotate=10.0, scale=0.1, shift=0.05, intensity=0.2)
    a = augment_batch(x, torch.Generator().manual_seed(3), **kw)  # type: ignore[arg-type]
    b = augment_batch(x, torch.Generator().manual_seed(3), **kw)  # type: ignore[arg-type]
    assert torch.equal(a, b) and not torch.equal(a, x)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    # Both views of a pair move alike: a pair of identical views stays identical.
    twin = torch.rand(4, 1, 32, 32).expand(-1, 2, -1, -1).contiguous()
    out = augment_batch(twin, torch.Generator().manual_seed(4), **kw)  # type: ignore[arg-type]
    assert torch.allclose(out[:, 0], out[:, 1])
    # A pure shift moves a bright dot by the expected number of pixels.
    dot = torch.zeros(1, 32, 32)
    dot[0, 16, 16] = 1.0
    moved = augment_batch(dot, torch.Generator().manual_seed(0), hflip=False, rot90=False,
                          shift=0.25)
    assert moved.sum() > 0 and int(moved[0].flatten().argmax()) != 16 * 32 + 16


def test_balance_power_applies_to_a_single_manifest_too(two_sources: Path,
                                                       tmp_path: Path) -> None:
    cfg = TrainConfig(**{**TINY, "balance_power": 0.5,
                         "heads": ("body_part", "instrument")}, body_parts="extended")
    task = ImageTask(cfg, two_sources / "real.csv", tmp_path / "run")
    members = list(range(len(task)))
    weights = task.sample_weights(members, cfg)
    assert weights is not None and float(weights.sum()) == pytest.approx(1.0)
    counts = Counter(task.images[i].instrument for i in members)
    share = {c: float(sum(weights[i] for i in members if task.images[i].instrument == c))
             for c in counts}
    total = sum(n ** 0.5 for n in counts.values())
    for c, n in counts.items():  # each class's share goes with the sqrt of its count
        assert share[c] == pytest.approx(n ** 0.5 / total)
    assert task.sample_weights(members, TrainConfig(**TINY)) is None  # classic sampler
