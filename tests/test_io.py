"""Tests for xreg.io: format sniffing, the folder walk, and pixel semantics.

DICOM cases use real files shipped with pydicom and pydicom-data (looked up
without downloading); rasters are written here with Pillow.
"""

from __future__ import annotations

import io
import os
import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageOps
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from xreg.errors import UnreadableImageError
from xreg.io import MAX_PIXELS, XrayImage, find_images, load_image, sniff_format
from xreg.io import pixels as px

# --------------------------------------------------------------------- helpers


def dicom_path(name: str) -> str:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} not installed (pydicom-data)")
    return str(path)


def raw_frame0(name: str) -> tuple[Dataset, np.ndarray]:
    ds = pydicom.dcmread(dicom_path(name), force=True)
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):  # e.g. OT-PAL-8-face
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds, pydicom.pixels.pixel_array(ds, index=0)


def block_mean(arr: np.ndarray, f: int) -> np.ndarray:
    h, w = arr.shape[0] // f, arr.shape[1] // f
    return (
        arr[: h * f, : w * f].reshape(h, f, w, f).astype(np.float64).mean(axis=(1, 3))
    )


def linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 onto [0, 1], written independently of xreg."""
    return np.clip((x.astype(np.float64) - (center - 0.5)) / (width - 1) + 0.5, 0, 1)


def minmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return (x - x.min()) / (x.max() - x.min())


def make_dicom(arr: np.ndarray, preamble: bool = True, **attrs: object) -> bytes:
    """An uncompressed DICOM file holding ``arr`` (uint16 grey unless told)."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.SamplesPerPixel = 1
    ds.Rows, ds.Columns = arr.shape[:2]
    ds.BitsAllocated = 8 * arr.dtype.itemsize
    ds.BitsStored = ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(arr.dtype.kind == "i")
    ds.PixelData = arr.tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    if preamble:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(buf, enforce_file_format=True)
    else:
        pydicom.dcmwrite(buf, ds, implicit_vr=True, little_endian=True)
    return buf.getvalue()


def raster(arr: np.ndarray, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` and that holds no pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def check_unit(image: XrayImage) -> None:
    p = image.pixels
    assert p.dtype == np.float32 and p.ndim == 2
    assert float(p.min()) >= 0.0 and float(p.max()) <= 1.0


# ------------------------------------------------------------------- sniffing


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\0" * 128 + b"DICM" + b"\2\0\0\0UL", "dicom"),
        (b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100", "dicom"),  # explicit VR, no preamble
        (b"\x08\x00\x08\x00\x18\x00\x00\x00DERIVED\\", "dicom"),  # implicit VR
        (b"\x02\x00\x00\x00UL\x04\x00\xc4\x00\x00\x00", "dicom"),  # bare file meta
        (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "png"),
        (b"\xff\xd8\xff\xe0\0\x10JFIF", "jpeg"),
        (b"II*\x00\x08\0\0\0", "tiff"),
        (b"MM\x00*\0\0\0\x08", "tiff"),
        (b"\x00\x00\x00\x0cjP  \r\n\x87\n\0\0\0\x14ftyp", "jp2"),
        (b"\xff\x4f\xff\x51\x00\x29", "jp2"),
        (b"", None),
        (b"# README\nplain text", None),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 200, None),  # Thumbs.db (OLE)
        (b"\x08\x00\x05\x00\xff\xff\xff\x7f", None),  # group 0008 but absurd length
    ],
)
def test_sniff_format(head: bytes, expected: str | None) -> None:
    assert sniff_format(head) == expected


@pytest.mark.parametrize(
    "name", ["MR_small.dcm", "ExplVR_LitEndNoMeta.dcm", "ExplVR_BigEndNoMeta.dcm"]
)
def test_sniff_real_dicom(name: str) -> None:
    with open(dicom_path(name), "rb") as f:
        assert sniff_format(f.read(132)) == "dicom"


# ------------------------------------------------------ DICOM: real test files

# name, shape, photometric, frames
DICOM_CASES = [
    ("RG1_UNCR.dcm", (1955, 1841), "MONOCHROME1", 1),  # CR, MONOCHROME1
    ("RG1_J2KR.dcm", (1955, 1841), "MONOCHROME1", 1),  # JPEG 2000 lossless
    ("emri_small_jpeg_2k_lossless.dcm", (64, 64), "MONOCHROME2", 10),
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", (768, 1024), "MONOCHROME2", 1),  # JPEG lossless
    ("SC_rgb_jpeg_dcmtk.dcm", (100, 100), "YBR_FULL", 1),  # JPEG baseline
    ("MR_small_RLE.dcm", (64, 64), "MONOCHROME2", 1),  # RLE
    ("emri_small.dcm", (64, 64), "MONOCHROME2", 10),  # multi-frame
    ("SC_rgb.dcm", (100, 100), "RGB", 1),
    ("image_dfl.dcm", (512, 512), "MONOCHROME2", 1),  # deflated
    ("MR_small_jpeg_ls_lossless.dcm", (64, 64), "MONOCHROME2", 1),  # JPEG-LS
    ("JPEGLSNearLossless_16.dcm", (50, 10), "MONOCHROME2", 1),
    ("OT-PAL-8-face.dcm", (480, 640), "PALETTE COLOR", 1),
    ("CT_small.dcm", (128, 128), "MONOCHROME2", 1),  # rescale slope/intercept
    ("vlut_04.dcm", (512, 512), "MONOCHROME2", 1),  # VOI LUT sequence
    ("mlut_18.dcm", (512, 512), "MONOCHROME2", 1),  # modality LUT sequence
]


@pytest.mark.parametrize(("name", "shape", "photometric", "frames"), DICOM_CASES)
def test_load_real_dicom(
    name: str, shape: tuple[int, int], photometric: str, frames: int
) -> None:
    target = 224 if min(shape) >= 1000 else None  # keep the big CR files quick
    image = load_image(dicom_path(name), target_size=target)
    check_unit(image)
    meta = image.meta
    assert meta.format == "dicom"
    assert meta.original_shape == shape
    assert meta.photometric == photometric
    assert meta.frames == frames
    if target is None:
        assert image.pixels.shape == shape and meta.reduced_by == 1
    assert float(image.pixels.std()) > 0.02  # a real picture, not a flat field


def test_monochrome1_is_inverted_window_of_stored_values() -> None:
    ds, raw = raw_frame0("RG1_UNCR.dcm")
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    pixels = load_image(dicom_path("RG1_UNCR.dcm")).pixels
    expected = 1.0 - linear_window(raw, float(ds.WindowCenter), float(ds.WindowWidth))
    np.testing.assert_allclose(pixels, expected, atol=1e-5)
    assert np.corrcoef(pixels.ravel(), raw.ravel())[0, 1] < -0.999


def test_monochrome1_synthetic_high_stored_value_is_dark() -> None:
    arr = np.zeros((40, 50), np.uint16)
    arr[:10, :10] = 4000  # high stored value = low attenuation in MONOCHROME1
    arr[-10:, -10:] = 1000
    data = make_dicom(
        arr, PhotometricInterpretation="MONOCHROME1", BitsStored=12, HighBit=11
    )
    pixels = load_image(data).pixels
    assert pixels[0, 0] == pytest.approx(0.0)
    assert pixels[20, 20] == pytest.approx(1.0)  # stored 0 -> brightest
    assert pixels[-1, -1] == pytest.approx(0.75)  # 1 - 1000/4000


def test_window_applied_after_rescale() -> None:
    arr = np.array([[0, 50, 100], [150, 200, 1000]], np.uint16)
    data = make_dicom(
        arr, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=100, WindowWidth=201
    )
    pixels = load_image(data).pixels
    expected = linear_window(arr * 2.0 - 100, 100, 201)
    np.testing.assert_allclose(pixels, expected, atol=1e-6)


def test_window_mr_small_and_minmax_ct_small() -> None:
    ds, raw = raw_frame0("MR_small.dcm")
    np.testing.assert_allclose(
        load_image(dicom_path("MR_small.dcm")).pixels,
        linear_window(raw, float(ds.WindowCenter), float(ds.WindowWidth)),
        atol=1e-6,
    )
    ds, raw = raw_frame0("CT_small.dcm")
    assert "WindowCenter" not in ds  # so the image's own range is used
    np.testing.assert_allclose(
        load_image(dicom_path("CT_small.dcm")).pixels, minmax(raw), atol=1e-6
    )


def test_voi_and_modality_lut_sequences() -> None:
    ds, raw = raw_frame0("vlut_04.dcm")
    bits = ds.VOILUTSequence[0].LUTDescriptor[2]
    expected = apply_voi_lut(raw, ds) / (2**bits - 1)
    np.testing.assert_allclose(
        load_image(dicom_path("vlut_04.dcm")).pixels, expected, atol=1e-6
    )
    ds, raw = raw_frame0("mlut_18.dcm")
    expected = minmax(apply_modality_lut(raw, ds))
    np.testing.assert_allclose(
        load_image(dicom_path("mlut_18.dcm")).pixels, expected, atol=1e-6
    )


def test_rgb_and_palette_become_luminance() -> None:
    _, raw = raw_frame0("SC_rgb.dcm")
    expected = raw.astype(np.float64) @ [0.299, 0.587, 0.114] / 255
    np.testing.assert_allclose(
        load_image(dicom_path("SC_rgb.dcm")).pixels, expected, atol=1e-5
    )
    ybr = load_image(dicom_path("SC_ybr_full_uncompressed.dcm")).pixels
    assert np.abs(ybr - expected).mean() < 0.01
    ds, raw = raw_frame0("OT-PAL-8-face.dcm")
    rgb = apply_color_lut(raw, ds).astype(np.float64)
    expected = rgb @ [0.299, 0.587, 0.114] / (255 if rgb.max() <= 255 else 65535)
    np.testing.assert_allclose(
        load_image(dicom_path("OT-PAL-8-face.dcm")).pixels, expected, atol=1e-5
    )


def test_multiframe_keeps_first_frame() -> None:
    ds = pydicom.dcmread(dicom_path("emri_small.dcm"))
    frames = pydicom.pixels.pixel_array(ds)
    image = load_image(dicom_path("emri_small.dcm"))
    assert image.meta.frames == 10
    np.testing.assert_allclose(image.pixels, minmax(frames[0]), atol=1e-6)
    assert np.abs(image.pixels - minmax(frames[5])).mean() > 0.01


def test_multiframe_decodes_only_the_first_frame() -> None:
    ds = pydicom.dcmread(dicom_path("emri_small_RLE.dcm"))
    frames = list(generate_frames(ds.PixelData, number_of_frames=10))
    frames[9] = b"\x01" + bytes(63)  # an RLE header claiming one segment at offset 0
    ds.PixelData = encapsulate(frames)
    with pytest.raises(RuntimeError, match="Unable to decode"):
        pydicom.pixels.pixel_array(ds)  # decoding every frame fails ...
    buf = io.BytesIO()
    ds.save_as(buf)
    image = load_image(buf.getvalue())  # ... but frame 0 alone is fine
    np.testing.assert_allclose(
        image.pixels, load_image(dicom_path("emri_small.dcm")).pixels, atol=1e-6
    )


@pytest.mark.parametrize(
    ("reference", "variant", "tolerance"),
    [
        ("MR_small.dcm", "MR_small_RLE.dcm", 1e-6),
        ("MR_small.dcm", "MR_small_jpeg_ls_lossless.dcm", 1e-6),
        ("MR_small.dcm", "MR_small_jp2klossless.dcm", 1e-6),
        ("MR_small.dcm", "MR_small_bigendian.dcm", 1e-6),
        ("emri_small.dcm", "emri_small_RLE.dcm", 1e-6),
        ("emri_small.dcm", "emri_small_jpeg_2k_lossless.dcm", 1e-6),
        ("emri_small.dcm", "emri_small_jpeg_ls_lossless.dcm", 1e-6),
        ("RG3_UNCR.dcm", "RG3_J2KR.dcm", 1e-6),
        ("US1_UNCR.dcm", "US1_J2KR.dcm", 1e-6),
        ("SC_rgb.dcm", "SC_rgb_rle.dcm", 1e-6),
        ("SC_rgb.dcm", "SC_rgb_jpeg_dcmtk.dcm", 0.02),  # lossy: mean abs diff
    ],
)
def test_compressed_matches_uncompressed_twin(
    reference: str, variant: str, tolerance: float
) -> None:
    a = load_image(dicom_path(reference)).pixels
    b = load_image(dicom_path(variant)).pixels
    assert a.shape == b.shape
    if tolerance < 1e-3:
        np.testing.assert_allclose(a, b, atol=tolerance)
    else:
        assert float(np.abs(a - b).mean()) < tolerance


@pytest.mark.parametrize("name", ["rtplan.dcm", "DICOMDIR"])
def test_no_pixel_data(name: str) -> None:
    with pytest.raises(UnreadableImageError, match="no pixel data"):
        load_image(dicom_path(name))


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
def test_truncated_dicom() -> None:
    with pytest.raises(UnreadableImageError, match="truncated file"):
        load_image(dicom_path("MR_truncated.dcm"))
    for name in ("RG1_UNCR.dcm", "RG1_J2KR.dcm"):
        data = Path(dicom_path(name)).read_bytes()
        with pytest.raises(UnreadableImageError, match="truncated file"):
            load_image(data[: len(data) // 2], target_size=224)


def test_unsupported_photometric() -> None:
    data = make_dicom(
        np.zeros((8, 8), np.uint16), PhotometricInterpretation="MONOCHROME3"
    )
    with pytest.raises(
        UnreadableImageError, match="unsupported photometric interpretation MONOCHROME3"
    ):
        load_image(data)


def test_unsupported_transfer_syntax_names_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Unavailable:
        is_available = False
        missing_dependencies = ("pyjpegls - requires pyjpegls",)

    monkeypatch.setattr("xreg.io.dicom.get_decoder", lambda ts: Unavailable())
    with pytest.raises(
        UnreadableImageError, match="unsupported transfer syntax.*pyjpegls"
    ):
        load_image(dicom_path("MR_small_jpeg_ls_lossless.dcm"))


def test_huge_dicom_header_refused_without_allocating() -> None:
    data = make_dicom(np.zeros((2, 2), np.uint16), Rows=60000, Columns=60000)
    assert 60000 * 60000 > MAX_PIXELS
    tracemalloc.start()
    try:
        with pytest.raises(UnreadableImageError, match="image too large"):
            load_image(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000


def test_huge_jpeg2000_codestream_in_small_dicom_refused() -> None:
    data = bytearray(Path(dicom_path("MR_small_jp2klossless.dcm")).read_bytes())
    siz = data.index(b"\xff\x4f\xff\x51") + 2  # SIZ follows SOC
    data[siz + 6 : siz + 14] = struct.pack(
        ">II", 12_500, 12_500
    )  # Xsiz, Ysiz: just over MAX_PIXELS
    with pytest.raises(UnreadableImageError, match="image too large"):
        load_image(bytes(data))


def test_raw_jpeg2000_codestream_reduced() -> None:
    ds, raw = raw_frame0("RG3_UNCR.dcm")
    j2k_ds = pydicom.dcmread(dicom_path("RG3_J2KR.dcm"))
    codestream = next(generate_frames(j2k_ds.PixelData, number_of_frames=1))
    assert sniff_format(codestream[:132]) == "jp2"
    image = load_image(codestream, target_size=224)
    assert image.meta.format == "jp2" and image.meta.bits_stored == ds.BitsStored
    assert image.meta.reduced_by == 4 and image.pixels.shape == (440, 440)
    expected = block_mean(raw, 4) / (
        2**ds.BitsStored - 1
    )  # stored values, no DICOM LUTs
    assert float(np.abs(image.pixels - expected).mean()) < 0.005


def test_preamble_less_dicom_without_extension(tmp_path: Path) -> None:
    _, raw = raw_frame0("MR_small.dcm")
    data = make_dicom(raw, preamble=False, WindowCenter=600, WindowWidth=1600)
    assert data[128:132] != b"DICM" and sniff_format(data[:132]) == "dicom"
    path = tmp_path / "IM000001"
    path.write_bytes(data)
    image = load_image(path)
    np.testing.assert_allclose(
        image.pixels, load_image(dicom_path("MR_small.dcm")).pixels, atol=1e-6
    )


def test_dicom_header_fields() -> None:
    ds = pydicom.dcmread(dicom_path("MR_small.dcm"))
    fields = load_image(dicom_path("MR_small.dcm")).meta.dicom
    assert fields["Modality"] == "MR"
    assert fields["StudyInstanceUID"] == ds.StudyInstanceUID
    assert fields["PatientID"] == ds.PatientID
    assert "AccessionNumber" not in fields  # absent or empty fields are left out
    assert "PatientName" not in fields
    arr = np.zeros((4, 4), np.uint16)
    both = make_dicom(
        arr,
        ImageLaterality="L",
        Laterality="R",
        BodyPartExamined="HIP",
        AccessionNumber="",
    )
    fields = load_image(both).meta.dicom
    assert fields["Laterality"] == "L" and fields["BodyPartExamined"] == "HIP"
    assert "AccessionNumber" not in fields and "ImageLaterality" not in fields
    assert load_image(make_dicom(arr, Laterality="R")).meta.dicom["Laterality"] == "R"


# ------------------------------------------------------------ reduced decoding


@pytest.mark.parametrize(
    ("name", "reference", "target", "tolerance"),
    [
        ("RG1_UNCR.dcm", "RG1_UNCR.dcm", 224, 0.01),
        ("RG1_J2KR.dcm", "RG1_UNCR.dcm", 224, 0.01),  # JPEG 2000 resolution levels
        ("RG3_J2KR.dcm", "RG3_UNCR.dcm", 224, 0.01),
        # 64 x 64 MR: a wavelet low-pass differs from a block mean on fine detail
        ("MR_small_jp2klossless.dcm", "MR_small.dcm", 32, 0.04),  # signed codestream
        # narrow CT window: windowing block means differs from block-meaning windows at edges
        ("J2K_pixelrep_mismatch.dcm", "J2K_pixelrep_mismatch.dcm", 64, 0.04),
    ],
)
def test_dicom_target_size_agrees_with_full_resolution(
    name: str, reference: str, target: int, tolerance: float
) -> None:
    full = load_image(dicom_path(reference)).pixels
    image = load_image(dicom_path(name), target_size=target)
    f = image.meta.reduced_by
    assert f > 1 and min(image.pixels.shape) >= target
    expected = block_mean(full, f)
    h, w = expected.shape
    assert image.pixels.shape[0] - h in (0, 1) and image.pixels.shape[1] - w in (0, 1)
    assert float(np.abs(image.pixels[:h, :w] - expected).mean()) < tolerance


def test_shrinks_stored_values_before_windowing() -> None:
    # Signed values in an unsigned JPEG 2000 codestream: decoded in full, then shrunk.
    ds, raw = raw_frame0("J2K_pixelrep_mismatch.dcm")
    image = load_image(dicom_path("J2K_pixelrep_mismatch.dcm"), target_size=64)
    assert image.meta.reduced_by == 8
    values = block_mean(raw, 8) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    expected = linear_window(
        values, float(ds.WindowCenter[0]), float(ds.WindowWidth[0])
    )
    np.testing.assert_allclose(image.pixels, expected, atol=1e-5)


@pytest.mark.parametrize(
    ("fmt", "dtype"),
    [("JPEG", np.uint8), ("PNG", np.uint16), ("PNG", np.uint8), ("TIFF", np.uint16)],
)
def test_raster_target_size_agrees_with_full_resolution(fmt: str, dtype: type) -> None:
    yy, xx = np.mgrid[0:1000, 0:1200]
    smooth = 0.5 + 0.4 * np.sin(xx / 90.0) * np.cos(yy / 70.0)
    arr = (smooth * np.iinfo(dtype).max).astype(dtype)
    data = raster(arr, fmt)
    full = load_image(data)
    image = load_image(data, target_size=224)
    f = image.meta.reduced_by
    assert f == 4 and min(image.pixels.shape) >= 224
    expected = block_mean(full.pixels, f)
    h, w = expected.shape
    assert float(np.abs(image.pixels[:h, :w] - expected).mean()) < 0.01
    assert image.meta.original_shape == full.pixels.shape == (1000, 1200)


def test_target_size_never_below_target_on_short_side() -> None:
    data = raster(np.full((300, 900), 128, np.uint8), "JPEG")
    image = load_image(data, target_size=224)
    assert image.meta.reduced_by == 1 and image.pixels.shape == (300, 900)
    image = load_image(data, target_size=100)
    assert image.meta.reduced_by == 2 and min(image.pixels.shape) >= 100


# ----------------------------------------------------------------- rasters


def test_png16_ramp_round_trips_exactly() -> None:
    ramp = np.arange(0, 65536, 16, dtype=np.uint16).reshape(64, 64)
    image = load_image(raster(ramp, "PNG"))
    assert image.meta.format == "png" and image.meta.bits_stored == 16
    np.testing.assert_array_equal(image.pixels, (ramp / 65535).astype(np.float32))


def test_png8_and_tiff_values() -> None:
    arr = np.arange(256, dtype=np.uint8).reshape(16, 16)
    np.testing.assert_allclose(
        load_image(raster(arr, "PNG")).pixels, arr / 255, atol=1e-7
    )
    tif = load_image(raster(arr.astype(np.uint16) * 257, "TIFF"))
    assert tif.meta.format == "tiff"
    np.testing.assert_allclose(tif.pixels, arr / 255, atol=1e-6)
    floats = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    np.testing.assert_allclose(
        load_image(raster(floats, "TIFF")).pixels, floats, atol=1e-7
    )


def test_colour_alpha_and_palette_become_grey() -> None:
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255  # pure red, half transparent
    rgba[..., 3] = 128
    pixels = load_image(raster(rgba, "PNG")).pixels
    np.testing.assert_allclose(
        pixels, 76 / 255, atol=1e-6
    )  # BT.601 luma of red, alpha dropped
    pal = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4).convert("P")
    buf = io.BytesIO()
    pal.save(buf, "PNG")
    assert Image.open(io.BytesIO(buf.getvalue())).mode == "P"
    np.testing.assert_allclose(
        load_image(buf.getvalue()).pixels,
        np.arange(64).reshape(8, 8) * 4 / 255,
        atol=1e-6,
    )


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


@pytest.mark.parametrize("target", [None, 20])
def test_exif_rotated_jpeg(target: int | None) -> None:
    arr = np.zeros((60, 100), np.uint8)  # stored: wide, bright block top-left
    arr[:20, :30] = 255
    data = raster(arr, "JPEG", exif=_exif(6), quality=95)
    pixels = load_image(data, target_size=target).pixels
    scale = 1 if target is None else 2
    assert pixels.shape == (100 // scale, 60 // scale)  # displayed: tall
    h, w = pixels.shape
    top_right = pixels[: h // 4, -w // 4 :]
    assert (
        top_right.mean() > 0.8
    )  # orientation 6 = turn clockwise: top-left -> top-right
    assert pixels[: h // 4, : w // 4].mean() < 0.2 and pixels[-h // 4 :, :].mean() < 0.2


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillow(orientation: int) -> None:
    arr = (np.arange(12 * 20) % 251).astype(np.uint8).reshape(12, 20)
    data = raster(arr, "PNG", exif=_exif(orientation))
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data)))) / 255
    np.testing.assert_allclose(load_image(data).pixels, expected, atol=1e-7)


def test_content_wins_over_extension(tmp_path: Path) -> None:
    path = tmp_path / "really_png.jpg"
    path.write_bytes(raster(np.full((5, 7), 200, np.uint8), "PNG"))
    image = load_image(path)
    assert image.meta.format == "png" and image.pixels.shape == (5, 7)
    np.testing.assert_allclose(image.pixels, 200 / 255, atol=1e-7)


def test_path_and_bytes_give_the_same_image(tmp_path: Path) -> None:
    data = Path(dicom_path("CT_small.dcm")).read_bytes()
    path = tmp_path / "ct"
    path.write_bytes(data)
    a, b = load_image(path, 64), load_image(data, 64)
    np.testing.assert_array_equal(a.pixels, b.pixels)
    assert a.meta == b.meta


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_raster(fmt: str) -> None:
    rng = np.random.default_rng(1)
    data = raster((rng.random((200, 300)) * 255).astype(np.uint8), fmt)
    with pytest.raises(UnreadableImageError, match="truncated file"):
        load_image(data[: len(data) // 2])


def test_empty_and_random_files(tmp_path: Path) -> None:
    empty = tmp_path / "bad.dcm"
    empty.write_bytes(b"")
    with pytest.raises(UnreadableImageError, match="empty file"):
        load_image(empty)
    noise = tmp_path / "noise.png"
    noise.write_bytes(np.random.default_rng(2).bytes(4000).replace(b"\x89PNG", b"xxxx"))
    with pytest.raises(UnreadableImageError, match="not an image"):
        load_image(noise)
    with pytest.raises(UnreadableImageError, match="corrupt data"):
        load_image(b"\x89PNG\r\n\x1a\n" + b"\0" * 200)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("size", [(12_500, 12_500), (30_000, 30_000)])
def test_huge_raster_header(size: tuple[int, int]) -> None:
    assert size[0] * size[1] > MAX_PIXELS
    with pytest.raises(UnreadableImageError, match="image too large"):
        load_image(png_header_only(*size))


# --------------------------------------------------------------- find_images


def test_find_images(tmp_path: Path) -> None:
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    (root / "out" / "deep").mkdir(parents=True)
    (root / ".cache").mkdir()
    png = raster(np.zeros((4, 4), np.uint8), "PNG")
    files = {
        "a.png": png,
        "sub/b.jpg": raster(np.zeros((4, 4), np.uint8), "JPEG"),
        "sub/IM0001": make_dicom(np.zeros((4, 4), np.uint16), preamble=False),
        "sub/bad.dcm": b"",
        "README.txt": b"# notes\n",
        "Thumbs.db": b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(300),
        ".hidden.png": png,
        ".cache/c.png": png,
        "out/d.png": png,
        "out/deep/e.png": png,
        "young.png": png,
    }
    now = time.time()
    for rel, data in files.items():
        path = root / rel
        path.write_bytes(data)
        os.utime(path, (now - 3600, now - 3600))
    os.utime(root / "young.png", (now - 5, now - 5))
    (root / "loop").symlink_to(root, target_is_directory=True)

    found = find_images(
        root, exclude=[root / "sub" / ".." / "out"], min_age=60, now=now
    )
    assert [p.relative_to(root).as_posix() for p in found] == [
        "a.png",
        "sub/IM0001",
        "sub/b.jpg",
        "sub/bad.dcm",
    ]
    everything = [p.relative_to(root).as_posix() for p in find_images(root)]
    assert everything == [
        "a.png",
        "out/d.png",
        "out/deep/e.png",
        "sub/IM0001",
        "sub/b.jpg",
        "sub/bad.dcm",
        "young.png",
    ]
    assert find_images(root / "out", exclude=[root / "out"]) == []


# ------------------------------------------------------------ pure functions


def test_downsample_is_block_mean_for_ints_and_channels() -> None:
    arr = np.arange(7 * 9, dtype=np.uint16).reshape(7, 9) * 1000
    np.testing.assert_allclose(px.downsample(arr, 3), block_mean(arr, 3), rtol=1e-6)
    signed = (arr.astype(np.int32) - 30000).astype(np.int16)
    np.testing.assert_allclose(
        px.downsample(signed, 2), block_mean(signed, 2), rtol=1e-6
    )
    rgb = np.stack([arr, arr // 2, arr // 3], axis=-1).astype(np.uint16)
    out = px.downsample(rgb, 2)
    assert out.shape == (3, 4, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[..., 1], block_mean(rgb[..., 1], 2), rtol=1e-6)
    assert px.downsample(arr, 1) is arr


def test_reduction_factor_and_window_functions() -> None:
    assert px.reduction_factor((2500, 2000), 224) == 8
    assert px.reduction_factor((2500, 2000), None) == 1
    assert px.reduction_factor((100, 100), 224) == 1
    x = np.array([0.0, 99.5, 100.0, 200.0])
    np.testing.assert_allclose(
        px.window(x, 100, 101), linear_window(x, 100, 101), atol=1e-7
    )
    np.testing.assert_allclose(
        px.window(x, 100, 200, "LINEAR_EXACT"), [0, 0.4975, 0.5, 1], atol=1e-6
    )
    assert px.window(np.array([100.0]), 100, 50, "SIGMOID")[0] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        px.window(x, 100, 0)


def _twelve_bit_dicom(path: Path, overlay: bool) -> np.ndarray:
    """A 12-bit-stored MONOCHROME2 file; with ``overlay`` the unused high bits
    hold garbage, as overlay planes in old files do."""
    rng = np.random.default_rng(3)
    values = (rng.random((240, 200)) * 4095).astype(np.uint16)
    garbage = rng.integers(0, 16, values.shape, dtype=np.uint16) << 12
    stored = values | garbage if overlay else values
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return values


@pytest.mark.parametrize("target", [None, 60])
def test_unused_high_bits_are_ignored(tmp_path, target):
    clean = _twelve_bit_dicom(tmp_path / "clean.dcm", overlay=False)
    _twelve_bit_dicom(tmp_path / "overlay.dcm", overlay=True)
    a = load_image(tmp_path / "clean.dcm", target_size=target).pixels
    b = load_image(tmp_path / "overlay.dcm", target_size=target).pixels
    np.testing.assert_array_equal(a, b)
    if target is None:
        expected = (clean - clean.min()) / float(clean.max() - clean.min())
        np.testing.assert_allclose(a, expected, atol=1e-6)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "RG1_UNCR.dcm",
                                  "emri_small.dcm"])
def test_native_fast_path_matches_pydicom(name):
    """Uncompressed files are read as views; pydicom's own decode must agree."""
    import pydicom

    from xreg.io.dicom import grey_to_unit

    path = dicom_path(name)
    ds = pydicom.dcmread(path)
    raw = pydicom.pixels.pixel_array(ds, index=0)
    expected = grey_to_unit(raw, ds, 1)
    got = load_image(path).pixels
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_try_load_image_returns_the_reason_instead_of_raising(tmp_path: Path) -> None:
    from xreg.io import try_load_image

    assert try_load_image(tmp_path / "missing.png") == "file not found"
    assert try_load_image(b"") == "empty file"
    good = tmp_path / "ok.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(good)
    assert not isinstance(try_load_image(good), str)


def test_read_header_names_an_undecodable_film_and_nothing_else(tmp_path):
    from xreg.io.dicom import read_header
    from xreg.io.load import try_load_image

    ds = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
    ds.PatientName = "Roe^Richard"
    ds.PixelData = bytes(64)  # far short of Rows x Columns
    ds.save_as(tmp_path / "bad.dcm")
    assert isinstance(try_load_image(tmp_path / "bad.dcm"), str)  # does not decode
    header = read_header(tmp_path / "bad.dcm")
    assert header["SOPInstanceUID"] == str(ds.SOPInstanceUID)
    assert header["StudyInstanceUID"] == str(ds.StudyInstanceUID)
    assert "Roe" not in " ".join(header.values())  # only DICOM_FIELDS are read
    Image.new("L", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "empty.dcm").write_bytes(b"")
    assert read_header(tmp_path / "a.png") == {} and read_header(tmp_path / "empty.dcm") == {}
    assert read_header(tmp_path / "missing.dcm") == {}
