"""Hip view pairing: DICOM tags, filename patterns, explicit pairs, the hard cases."""

from __future__ import annotations

import pytest

from xreg.errors import ConfigError
from xreg.hip.pairing import (
    HipImage,
    compile_pattern,
    pair_views,
    parse_filename,
    side_from_dicom,
    view_from_dicom,
)


@pytest.mark.parametrize(("position", "description", "view"), [
    ("AP", None, "AP"), ("PA", "", "AP"), ("ap ", None, "AP"),
    ("LL", None, "LAT"), ("RL", None, "LAT"), ("LATERAL", None, "LAT"), ("LAT", None, "LAT"),
    ("", "HIP AP", "AP"), (None, "Hip lateral (frog leg)", "LAT"),
    (None, "HUEFTE AXIAL LI", "LAT"), (None, "hip cross-table", "LAT"),
    (None, "Pelvis/hip: AP+LAT", None),  # both views named: says nothing
    (None, "HIP", None), ("", None, None), ("OBLIQUE", "", None),
])
def test_view_from_dicom(position: str | None, description: str | None,
                         view: str | None) -> None:
    assert view_from_dicom(position, description) == view


@pytest.mark.parametrize(("value", "side"), [
    ("L", "L"), ("r", "R"), ("B", None), ("U", None), ("", None), (None, None)])
def test_side_from_dicom(value: str | None, side: str | None) -> None:
    assert side_from_dicom(value) == side


@pytest.mark.parametrize(("name", "parsed"), [
    ("1234_AP.png", ("1234", "AP", None)),
    ("1234_lat.PNG", ("1234", "LAT", None)),
    ("smith-hip-R-lateral.jpg", ("smith-hip", "LAT", "R")),
    ("A17 L AXIAL.dcm", ("A17", "LAT", "L")),
    ("A17.ap.left", ("A17", "AP", "L")),
    ("ST00001_XTABLE", ("ST00001", "LAT", None)),
    ("case_7_cross-table.jpeg", ("case_7", "LAT", None)),
    ("img_000001.png", None),
    ("knee.png", None),
])
def test_parse_filename_default_pattern(name: str, parsed: tuple | None) -> None:
    assert parse_filename(name, compile_pattern(None)) == parsed


def test_custom_pattern_and_bad_patterns() -> None:
    pattern = compile_pattern(r"(?P<view>AP|LAT)-(?P<study>\d+)")
    assert parse_filename("ap-0042.png", pattern) == ("0042", "AP", None)
    with pytest.raises(ConfigError, match="named group.*study"):
        compile_pattern(r"(?P<view>AP)")
    with pytest.raises(ConfigError, match="bad filename pattern"):
        compile_pattern(r"(?P<study>")


def im(path: str, study: str | None, view: str | None, side: str | None = None) -> HipImage:
    return HipImage(path, study, view, side)


def test_one_ap_and_one_lateral_per_study_and_side_pair() -> None:
    studies = pair_views([
        im("s1_ap", "S1", "AP"), im("s1_lat", "S1", "LAT"),
        im("s2_ap_l", "S2", "AP", "L"), im("s2_lat_l", "S2", "LAT", "L"),
        im("s2_ap_r", "S2", "AP", "R"), im("s2_lat_r", "S2", "LAT", "R"),
    ])
    assert [(s.study, s.side, s.ap, s.lateral, s.status) for s in studies] == [
        ("S1", None, "s1_ap", "s1_lat", "paired"),
        ("S2", "L", "s2_ap_l", "s2_lat_l", "paired"),
        ("S2", "R", "s2_ap_r", "s2_lat_r", "paired"),
    ]


def test_missing_ambiguous_and_unknown_are_reported_never_guessed() -> None:
    studies = {(s.study, s.side): s for s in pair_views([
        im("a_ap", "A", "AP"),                                   # no lateral
        im("b_lat", "B", "LAT"),                                 # no AP
        im("c_ap1", "C", "AP"), im("c_ap2", "C", "AP"), im("c_lat", "C", "LAT"),
        im("d_ap", "D", "AP"), im("d_x", "D", None),             # a film of unknown view
        im("e_ap", "E", "AP", "L"), im("e_lat", "E", "LAT", "L"), im("e_lat2", "E", "LAT"),
        im("lonely.png", None, "AP"),                            # no study at all
    ])}
    assert studies[("A", None)].status == "missing_lateral"
    assert studies[("A", None)].ap == "a_ap" and studies[("A", None)].lateral is None
    assert studies[("B", None)].status == "missing_ap"
    c = studies[("C", None)]
    assert c.status == "ambiguous" and c.ap is None and c.lateral == "c_lat"
    assert c.candidates == ("c_ap1", "c_ap2", "c_lat")
    assert studies[("D", None)].status == "unknown"
    assert studies[("E", "L")].status == "paired"
    assert studies[("E", None)].status == "ambiguous"  # unsided film in a sided study
    assert studies[("?lonely.png", None)].status == "unknown"
    assert not any(s.paired for k, s in studies.items() if k[0] != "E")


def test_explicit_pairs_win_and_are_not_paired_again() -> None:
    studies = pair_views([im("x1", "X", "AP"), im("x2", "X", "LAT"), im("y1", "Y", "AP")],
                         explicit={"mine": ("x2", "x1")})
    assert [(s.study, s.ap, s.lateral, s.status) for s in studies] == [
        ("Y", "y1", None, "missing_lateral"), ("mine", "x2", "x1", "paired")]
