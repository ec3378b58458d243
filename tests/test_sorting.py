"""The pure planner and the layout rules."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from xreg.errors import ConfigError
from xreg.sort.placement import (
    PlanItem,
    plan_moves,
    render_layout,
    sanitise,
    suffixed,
    validate_layout,
)

LAYOUT = "{body_part}/{instrument}/{name}"


def item(src: str, sha: str, status: str = "sorted", **fields: str) -> PlanItem:
    base = {"body_part": "hand", "instrument": "no_instrument", "name": Path(src).name}
    return PlanItem(Path(src), sha, status, base | fields)


@pytest.mark.parametrize("value,expected", [
    ("../../etc", "etc"), ("/abs/path", "abs_path"), ("..", "unknown"), ("", "unknown"),
    (None, "unknown"), ("AP", "AP"), ("L R", "L_R"), (".hidden", "hidden"),
    ("a/../b", "a_.._b"), ("x" * 200, "x" * 80), ("名前", "unknown"),
])
def test_sanitise(value, expected):
    assert sanitise(value) == expected
    assert "/" not in sanitise(value)


def test_sanitised_values_never_escape():
    hostile = {"body_part": "../..", "instrument": "/etc", "view": "..", "name": "../../x.png"}
    rel = render_layout("{body_part}/{instrument}/{view}/{name}", hostile)
    assert not rel.is_absolute() and ".." not in rel.parts
    assert rel == PurePosixPath("unknown/etc/unknown/x.png")


@pytest.mark.parametrize("bad", ["", "/x/{name}", "../{name}", "a//{name}", "{nope}/{name}",
                                 "{body_part}", "{name!r}", "{name:>5}", "_review/{name}",
                                 "a\\{name}", "{body_part"])
def test_validate_layout_rejects(bad):
    with pytest.raises(ConfigError, match="layout|field"):
        validate_layout(bad)


def test_plan_sorted_review_unreadable():
    moves = plan_moves([
        item("/in/a.png", "1" * 64),
        item("/in/b.png", "2" * 64, status="review"),
        item("/in/c.dcm", "3" * 64, status="unreadable"),
    ], layout=LAYOUT)
    assert [str(m.dest) for m in moves] == [
        "hand/no_instrument/a.png", "_review/b.png", "_unreadable/c.dcm"]


def test_plan_same_name_different_content_gets_suffix():
    moves = plan_moves([item("/in/x/a.png", "1" * 64), item("/in/y/a.png", "2" * 64)],
                       layout=LAYOUT)
    assert str(moves[0].dest) == "hand/no_instrument/a.png"
    assert str(moves[1].dest) == "hand/no_instrument/a__22222222.png"


def test_plan_same_content_twice_is_one_placement():
    moves = plan_moves([item("/in/x/a.png", "1" * 64), item("/in/y/b.png", "1" * 64)],
                       layout=LAYOUT)
    assert moves[1].duplicate_of == Path("/in/x/a.png")
    assert moves[1].dest == moves[0].dest


def test_plan_is_deterministic():
    items = [item(f"/in/{i % 3}.png", f"{i:064d}") for i in range(10)]
    assert plan_moves(items, layout=LAYOUT) == plan_moves(items, layout=LAYOUT)


def test_suffixed_keeps_extension():
    got = suffixed(PurePosixPath("a/b.tar.gz"), "abcdef1234")
    assert got == PurePosixPath("a/b__abcdef12.tar.gz")
    assert suffixed(PurePosixPath("a/IM0001"), "abcdef1234") == PurePosixPath("a/IM0001__abcdef12")


def test_apply_move_refuses_a_source_that_changed(tmp_path):
    import hashlib
    import os

    from xreg.errors import PlacementError
    from xreg.sort.placement import Move, apply_move

    src = tmp_path / "a.png"
    src.write_bytes(b"original")
    sha = hashlib.sha256(b"original").hexdigest()
    st = src.stat()
    src.write_bytes(b"modified after it was hashed")
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    move = Move(src, sha, PurePosixPath("hand/a.png"), "sorted")
    with pytest.raises(PlacementError, match="source changed"):
        apply_move(move, tmp_path / "out", "copy", (st.st_size, st.st_mtime_ns))
    assert [p.name for p in (tmp_path / "out" / "hand").iterdir()] == []
    # Without the scan-time stat the copy itself is hashed, with the same result.
    with pytest.raises(PlacementError):
        apply_move(move, tmp_path / "out", "copy")


def test_apply_move_adopts_identical_and_suffixes_different(tmp_path):
    import hashlib

    from xreg.sort.placement import Move, apply_move

    src = tmp_path / "a.png"
    src.write_bytes(b"content")
    sha = hashlib.sha256(b"content").hexdigest()
    move = Move(src, sha, PurePosixPath("hand/a.png"), "sorted")
    out = tmp_path / "out"
    assert apply_move(move, out, "copy") == PurePosixPath("hand/a.png")
    assert apply_move(move, out, "copy") == PurePosixPath("hand/a.png")  # adopted, no copy
    assert sorted(p.name for p in (out / "hand").iterdir()) == ["a.png"]
    (out / "hand" / "a.png").write_bytes(b"someone else")
    assert apply_move(move, out, "copy") == PurePosixPath(f"hand/a__{sha[:8]}.png")
    assert (out / "hand" / "a.png").read_bytes() == b"someone else"


def test_a_move_on_one_filesystem_links_and_removes_the_source_only_when_told(
        tmp_path, monkeypatch):
    import errno
    import hashlib
    import os

    from xreg.sort import placement
    from xreg.sort.placement import Move, apply_move, remove_source

    src = tmp_path / "a.dcm"
    src.write_bytes(b"film")
    sha = hashlib.sha256(b"film").hexdigest()
    st = src.stat()
    out = tmp_path / "out"
    move = Move(src, sha, PurePosixPath("hand/a.dcm"), "sorted")
    rel = apply_move(move, out, "move", (st.st_size, st.st_mtime_ns))
    placed = out / rel
    # The placed film is the source's own inode (nothing copied), the source
    # keeps its name until the placement is recorded, and no temp name is left.
    assert os.path.samestat(src.stat(), placed.stat()) and placed.stat().st_nlink == 2
    assert sorted(p.name for p in placed.parent.iterdir()) == ["a.dcm"]
    monkeypatch.setattr(placement, "file_sha256", lambda p: pytest.fail("read again"))
    assert remove_source(src, sha, placed) and not src.exists()
    assert placed.read_bytes() == b"film" and placed.stat().st_nlink == 1
    monkeypatch.undo()

    # Where no hard link can be made (another filesystem), it is copied and verified.
    def no_link(*args, **kwargs):
        raise OSError(errno.EXDEV, "cross-device link")

    src2 = tmp_path / "b.dcm"
    src2.write_bytes(b"other film")
    sha2 = hashlib.sha256(b"other film").hexdigest()
    st2 = src2.stat()
    real_link = os.link
    monkeypatch.setattr(placement.os, "link", lambda a, b, **kw: (
        no_link() if Path(a) == src2 else real_link(a, b, **kw)))
    rel2 = apply_move(Move(src2, sha2, PurePosixPath("hand/b.dcm"), "sorted"), out, "move",
                      (st2.st_size, st2.st_mtime_ns))
    assert not os.path.samestat(src2.stat(), (out / rel2).stat())
    assert (out / rel2).read_bytes() == b"other film"
    # A changed source is refused by the link path too.
    src3 = tmp_path / "c.dcm"
    src3.write_bytes(b"third")
    st3 = src3.stat()
    os.utime(src3, ns=(st3.st_atime_ns, st3.st_mtime_ns + 1))
    with pytest.raises(placement.PlacementError, match="source changed"):
        apply_move(Move(src3, hashlib.sha256(b"third").hexdigest(),
                        PurePosixPath("hand/c.dcm"), "sorted"), out, "move",
                   (st3.st_size, st3.st_mtime_ns))
    assert not (out / "hand" / "c.dcm").exists() and src3.exists()
