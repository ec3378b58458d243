"""Applying reviews: the planned folder, and a kill at any step loses nothing."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import biased_checkpoint, make_old, sha256_of
from tests.test_crash_safety import make_pngs
from xreg.config import SortOptions
from xreg.model.models import BODY_PARTS
from xreg.registry import Registry
from xreg.registry.export import manifest_rows
from xreg.registry.reviews import Review, add_review, review_queue
from xreg.sort import relocate
from xreg.sort.folders import output_lock
from xreg.sort.placement import TEMP_PREFIX, temp_path
from xreg.sort.runner import run_sort


class Killed(BaseException):
    """Stands in for SIGKILL at one step (nothing after it runs)."""


@pytest.fixture(scope="module")
def knee_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return biased_checkpoint(tmp_path_factory.mktemp("w") / "knee.pt", BODY_PARTS, "knee")


def sorted_out(tmp_path: Path, weights: Path, n: int = 6, **options: object) -> Path:
    make_pngs(tmp_path / "in", n, size=64)
    run_sort(tmp_path / "in", tmp_path / "out",
             SortOptions(weights=weights, min_age=0, **options))  # type: ignore[arg-type]
    return tmp_path / "out"


def review_all(out: Path, body_part: str = "hip", **labels: int | None) -> list[str]:
    with Registry(out / "registry.sqlite") as reg:
        shas = [r["sha256"] for r in reg.iter_images()]
        for sha in shas:
            add_review(reg, Review(sha, "tester", body_part, **labels), BODY_PARTS)
    return shas


def placed(out: Path, *, killed: bool = False) -> dict[str, list[str]]:
    """Content hash -> every name under OUT holding it.

    A temp file fails the test unless ``killed`` (the next run removes it).
    """
    found: dict[str, list[str]] = {}
    for p in out.rglob("*"):
        if p.name.startswith(TEMP_PREFIX):
            assert killed, f"temp file left: {p}"
            continue
        if p.is_file() and not p.name.startswith(("registry.sqlite", ".xreg")):
            found.setdefault(sha256_of(p), []).append(str(p.relative_to(out)))
    return found


def registry_dest(out: Path) -> dict[str, str]:
    with sqlite3.connect(out / "registry.sqlite") as db:
        return dict(db.execute("SELECT sha256, dest_path FROM images"))


def apply(out: Path) -> list[relocate.Applied]:
    with output_lock(out), Registry(out / "registry.sqlite") as reg:
        return relocate.apply_reviews(reg, out)


def test_apply_uses_the_run_layout_and_the_reviewers_labels(tmp_path: Path,
                                                            knee_model: Path) -> None:
    out = sorted_out(tmp_path, knee_model, layout="{body_part}/{instrument}/{fracture}/{name}")
    shas = review_all(out, "elbow", instrument=1)
    done = apply(out)
    assert all(a.moved and a.error is None for a in done)
    dest = registry_dest(out)
    for sha in shas:
        assert dest[sha].startswith("elbow/instrument/unknown/"), dest[sha]
        assert placed(out)[sha] == [dest[sha]]
    assert apply(out) == []  # nothing left to apply


def test_a_name_taken_by_other_content_gets_a_suffix(tmp_path: Path, knee_model: Path) -> None:
    out = sorted_out(tmp_path, knee_model, n=2)
    shas = review_all(out)
    dest = registry_dest(out)
    squatter = out / "hip" / "no_instrument" / Path(dest[shas[0]]).name
    squatter.parent.mkdir(parents=True)
    squatter.write_bytes(b"someone else's file")
    apply(out)
    after = registry_dest(out)
    assert after[shas[0]].endswith(f"__{shas[0][:8]}.png")
    assert squatter.read_bytes() == b"someone else's file"


def _kill_at(monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    if step == "before_place":
        def place(move, image, out_root):  # type: ignore[no-untyped-def]
            final = out_root / move.dest
            final.parent.mkdir(parents=True, exist_ok=True)
            temp_path(final, move.sha256).write_bytes(b"half a copy")
            raise Killed
        monkeypatch.setattr(relocate, "_place", place)
    elif step == "before_commit":
        monkeypatch.setattr(relocate, "commit_apply", _raise)
    else:
        monkeypatch.setattr(relocate, "_remove_old", _raise)


def _raise(*args: object) -> None:
    raise Killed


def test_a_kill_after_linking_before_the_temp_is_removed_leaves_no_temp(
        tmp_path: Path, knee_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from xreg.sort import placement

    out = sorted_out(tmp_path, knee_model, n=1)
    (sha,) = review_all(out)
    real_link = placement._place_no_replace

    def link_then_die(tmp: Path, final: Path) -> bool:
        real_link(tmp, final)
        raise Killed  # the temp file and the new name both exist now

    with monkeypatch.context() as patch:
        patch.setattr(placement, "_place_no_replace", link_then_die)
        patch.setattr(placement, "_remove_quietly", lambda path: None)
        with pytest.raises(Killed):
            apply(out)
    assert any(p.name.startswith(TEMP_PREFIX) for p in out.rglob("*"))
    apply(out)
    assert placed(out)[sha] == [registry_dest(out)[sha]]  # and no temp file is left
    assert registry_dest(out)[sha].startswith("hip/")


@pytest.mark.parametrize("step", ["before_place", "before_commit", "before_remove"])
def test_a_kill_at_any_step_is_finished_or_undone_by_the_next_run(
        tmp_path: Path, knee_model: Path, monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    out = sorted_out(tmp_path, knee_model, n=3)
    shas = review_all(out)
    before = registry_dest(out)
    with monkeypatch.context() as patch:
        _kill_at(patch, step)
        with pytest.raises(Killed):
            apply(out)
    # The film is in a place the registry knows, whatever the step.
    for sha in shas:
        assert registry_dest(out)[sha] in placed(out, killed=True).get(sha, [])
    # The next sort (or apply) resolves it.
    make_old(tmp_path / "in")
    run_sort(tmp_path / "in", out, SortOptions(weights=knee_model, min_age=0))
    with sqlite3.connect(out / "registry.sqlite") as db:
        state = db.execute("SELECT apply_state, apply_error FROM reviews WHERE sha256 = ?",
                           (shas[0],)).fetchone()
    if step == "before_place":
        assert state[0] is None and "interrupted" in state[1]
        assert registry_dest(out)[shas[0]] == before[shas[0]]
    else:
        assert state == ("done", None)
        assert registry_dest(out)[shas[0]].startswith("hip/")
    apply(out)
    for sha in shas:
        assert placed(out)[sha] == [registry_dest(out)[sha]]
        assert registry_dest(out)[sha].startswith("hip/")


def test_sigkill_during_apply_loses_nothing(tmp_path: Path, knee_model: Path) -> None:
    out = sorted_out(tmp_path, knee_model, n=30)
    shas = review_all(out)
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from xreg.registry import Registry
        from xreg.sort import relocate
        from xreg.sort.folders import output_lock
        slow = relocate._remove_old
        def remove(*a):
            time.sleep(0.1)
            slow(*a)
        relocate._remove_old = remove
        out = Path({str(out)!r})
        with output_lock(out), Registry(out / "registry.sqlite") as reg:
            relocate.apply_reviews(reg, out)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with sqlite3.connect(f"file:{out / 'registry.sqlite'}?mode=ro", uri=True) as db:
                done = db.execute("SELECT COUNT(*) FROM reviews WHERE apply_state IS NOT NULL"
                                  ).fetchone()[0]
        except sqlite3.OperationalError:  # busy for a moment while the writer commits
            continue
        if done >= 5:
            break
        time.sleep(0.005)
    assert proc.poll() is None, f"apply finished before the kill: {proc.stderr.read()!r}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for sha in shas:  # every film is still where the registry says
        assert registry_dest(out)[sha] in placed(out, killed=True).get(sha, [])
    apply(out)
    found = placed(out)
    for sha in shas:
        assert found[sha] == [registry_dest(out)[sha]]
        assert found[sha][0].startswith("hip/")


def test_review_queue_is_least_confident_first_and_export_prefers_reviews(
        tmp_path: Path) -> None:
    from tests.conftest import write_inputs
    from xreg.model.checkpoint import default_weights

    # Trained weights: a random network gives every film the same probabilities.
    weights = default_weights().with_name("bodypart_instrument_phantom.pt")
    write_inputs(tmp_path / "in")
    run_sort(tmp_path / "in", tmp_path / "first", SortOptions(weights=weights, min_age=0,
                                                               min_confidence=0))
    with Registry(tmp_path / "first" / "registry.sqlite", readonly=True) as reg:
        confidences = sorted(r["body_part_prob"] for r in reg.iter_images()
                             if r["body_part_prob"] is not None)
    middle = confidences[len(confidences) // 2]  # about half sorted, half to _review
    out = tmp_path / "out"
    run_sort(tmp_path / "in", out, SortOptions(weights=weights, min_age=0,
                                               min_confidence=middle))
    with Registry(out / "registry.sqlite") as reg:
        queue, total = review_queue(reg, per_page=100, order="confidence")
        probs = [q["body_part_prob"] for q in queue]
        assert probs == sorted(probs) and total == len(queue) > 3
        assert {q["status"] for q in queue} == {"sorted", "review"}
        first, second = queue[0], queue[1]
        add_review(reg, Review(first["sha256"], "a", "wrist", 1, 1), BODY_PARTS)
        add_review(reg, Review(second["sha256"], "a", "not_msk"), BODY_PARTS)
        assert review_queue(reg, per_page=100)[1] == total - 2
        reviewed = list(manifest_rows(reg, out, reviewed_only=True))
        everything = list(manifest_rows(reg, out, other=None))
    by_sha = {r["sha256"]: r for r in reviewed}
    assert set(by_sha) == {first["sha256"], second["sha256"]}
    assert {k: by_sha[first["sha256"]][k] for k in ("body_part", "instrument", "fracture",
                                                     "label_source", "reviewer")} == {
        "body_part": "wrist", "instrument": "1", "fracture": "1", "label_source": "review",
        "reviewer": "a"}
    # Not judged: the model's instrument stays; not MSK is "other".
    assert by_sha[second["sha256"]]["body_part"] == "other"
    assert by_sha[second["sha256"]]["instrument"] == str(second["instrument"])
    sources = {r["label_source"] for r in everything}
    assert sources == {"review", "model"}
    assert second["sha256"] not in {r["sha256"] for r in everything}  # other=None
    statuses = {r["sha256"]: r for r in everything}
    with Registry(out / "registry.sqlite", readonly=True) as reg:
        for row in reg.iter_images():
            if row["sha256"] in statuses and row["sha256"] != first["sha256"]:
                assert row["status"] == "sorted"  # unreviewed _review films are no labels
