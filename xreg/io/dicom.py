"""Decode DICOM radiographs: first frame, modality LUT, VOI, MONOCHROME1, colour."""

from __future__ import annotations

import io
import os
import struct
from typing import IO, Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.multival import MultiValue
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi
from pydicom.pixels.utils import pixel_array as _pixel_array
from pydicom.uid import (
    JPEG2000,
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
)

from xreg.errors import UnreadableImageError
from xreg.io import j2k, pixels
from xreg.io._records import ImageMeta, XrayImage, check_size
from xreg.io.detect import SNIFF_BYTES, sniff_format

#: Header fields copied into ``ImageMeta.dicom`` (as strings, when non-empty).
#: ``Laterality`` holds ImageLaterality, falling back to the series Laterality.
DICOM_FIELDS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "AccessionNumber",
    "Modality",
    "BodyPartExamined",
    "ViewPosition",
    "Laterality",
    "SeriesDescription",
    "StudyDescription",
    "StudyDate",
    "PatientID",
)

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_GREY = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")
_J2K_SYNTAXES = (JPEG2000Lossless, JPEG2000)
# Messages pydicom and the codecs use when the data stops early.
_TRUNCATION_HINTS = ("less than expected", "truncat", "insufficient", "end of", "eof")
_DECODE_ERRORS = (
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
    IndexError,
    struct.error,
    EOFError,
    OSError,
    NotImplementedError,
    RuntimeError,
    SyntaxError,
    StopIteration,
)


def header_fields(ds: Dataset) -> dict[str, str]:
    """The :data:`DICOM_FIELDS` present and non-empty in ``ds``, as strings."""
    out: dict[str, str] = {}
    for key in DICOM_FIELDS:
        sources = ("ImageLaterality", "Laterality") if key == "Laterality" else (key,)
        for source in sources:
            try:
                value = ds.get(source)
            except _DECODE_ERRORS:  # a corrupt element must not sink the image
                value = None
            text = "" if value is None else str(value).strip()
            if text:
                out[key] = text
                break
    return out


def read_header(path: str | os.PathLike[str]) -> dict[str, str]:
    """The :data:`DICOM_FIELDS` of a DICOM file read up to its pixel data.

    For a film whose pixels could not be decoded: its UIDs still say which
    instance it is (so a pull does not fetch it again). ``{}`` for a file
    that is not DICOM or whose header cannot be read either.
    """
    try:
        with open(path, "rb") as fh:
            if sniff_format(fh.read(SNIFF_BYTES)) != "dicom":
                return {}
            fh.seek(0)
            ds = pydicom.dcmread(fh, force=True, stop_before_pixels=True)
    except _DECODE_ERRORS:
        return {}
    return header_fields(ds)


def _int(ds: Dataset, keyword: str, default: int) -> int:
    try:
        return int(ds.get(keyword) or default)
    except (TypeError, ValueError):
        return default


def _ensure_transfer_syntax(ds: Dataset) -> UID:
    """Fill in the transfer syntax of a file without meta information from how it was read."""
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts:
        return UID(str(ts))
    implicit, little = ds.original_encoding
    if little is False:
        ts = ExplicitVRBigEndian
    elif implicit:
        ts = ImplicitVRLittleEndian
    else:
        ts = ExplicitVRLittleEndian
    if meta is None:
        ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    return ts


def _check_decodable(ts: UID) -> None:
    try:
        decoder = get_decoder(ts)
    except NotImplementedError as exc:
        raise UnreadableImageError("unsupported transfer syntax", ts.name) from exc
    if not decoder.is_available:
        needs = "; ".join(decoder.missing_dependencies)
        raise UnreadableImageError(
            "unsupported transfer syntax", f"{ts.name} ({needs})"
        )


def _j2k_first_frame(
    ds: Dataset, target_size: int | None
) -> tuple[np.ndarray, int] | None:
    """First frame of a grey JPEG 2000 dataset at reduced resolution, or ``None``.

    Also refuses a codestream whose own size is a decompression bomb, since
    the DICOM header's Rows and Columns need not match what it holds.
    """
    frames = _int(ds, "NumberOfFrames", 1)
    frame = next(generate_frames(ds.PixelData, number_of_frames=frames))
    header = j2k.parse_header(frame)
    if header is None:
        return None
    check_size(header.rows, header.cols, header.components)
    same_size = (header.rows, header.cols) == (
        _int(ds, "Rows", 0),
        _int(ds, "Columns", 0),
    )
    if not target_size or header.components != 1 or not same_size:
        return None
    if _int(ds, "PixelRepresentation", 0) == 1 and not header.signed:
        # Signed values stored as unsigned two's complement: the wavelet
        # low-pass would average across the wrap-around, so decode in full.
        return None
    levels = j2k.reduce_levels(header, target_size)
    if levels == 0:
        return None
    return j2k.decode_codestream(frame, header, levels), 2**levels


def first_frame(
    ds: Dataset, ts: UID, target_size: int | None
) -> tuple[np.ndarray, int]:
    """Stored values of frame 0 and the factor decoding already shrank it by.

    Only grey JPEG 2000 decodes at reduced resolution; any trouble on that
    path falls back to pydicom's full decode, which handles the edge cases.
    """
    if ts in _J2K_SYNTAXES:
        try:
            reduced = _j2k_first_frame(ds, target_size)
        except (OSError, ValueError, SyntaxError, struct.error, StopIteration):
            reduced = None
        if reduced is not None:
            return reduced
    return _pixel_array(ds, index=0), 1


def _first(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple, MultiValue)):
        value = value[0] if len(value) else None
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def window_or_minmax(values: np.ndarray, ds: Dataset) -> np.ndarray:
    """Apply the header's window onto [0, 1], else the image's own min..max.

    A window that leaves the image a single flat value is treated as broken
    metadata and ignored: a blank image is no use to the classifier.
    """
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is not None and width is not None:
        function = str(ds.get("VOILUTFunction") or "LINEAR")
        try:
            out = pixels.window(values, center, width, function)
        except ValueError:
            out = None
        if out is not None and out.size and float(out.max()) > float(out.min()):
            return out
    return pixels.normalise_minmax(values)


def grey_to_unit(raw: np.ndarray, ds: Dataset, factor: int) -> np.ndarray:
    """Stored grey values -> [0, 1] display values, shrunk by ``factor``, bone bright."""
    voi_lut = ds.get("VOILUTSequence")
    if ds.get("ModalityLUTSequence") or voi_lut:
        # Lookup tables are non-linear, so they run on full-resolution integers.
        values = apply_modality_lut(raw, ds)
        if voi_lut:
            if values.dtype.kind == "f":
                values = np.rint(values).astype(np.int64)
            depth = int(voi_lut[0].LUTDescriptor[2])
            out = pixels.normalise_range(
                pixels.downsample(apply_voi(values, ds), factor), 0, 2**depth - 1
            )
        else:
            out = window_or_minmax(pixels.downsample(values, factor), ds)
    else:
        small = pixels.downsample(raw, factor)
        slope = _first(ds.get("RescaleSlope"))
        intercept = _first(ds.get("RescaleIntercept"))
        values = pixels.rescale(small, slope or 1.0, intercept or 0.0)
        out = window_or_minmax(values, ds)
    if raw.dtype.kind == "f":  # float pixel data may hold NaN
        out = np.nan_to_num(out, nan=0.0)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        out = pixels.invert(out)
    return out


def colour_to_unit(raw: np.ndarray, ds: Dataset, factor: int) -> np.ndarray:
    """RGB (or palette) stored values -> [0, 1] luminance, shrunk by ``factor``."""
    if str(ds.get("PhotometricInterpretation", "")).strip() == "PALETTE COLOR":
        raw = apply_color_lut(raw, ds)
        # Some palettes declare 16-bit entries but hold 8-bit values.
        top = 255.0 if raw.dtype == np.uint8 or raw.max() <= 255 else 65535.0
    else:
        top = float(2 ** _int(ds, "BitsStored", 8 * raw.dtype.itemsize) - 1)
    grey = pixels.to_grey(pixels.downsample(raw, factor))
    return pixels.normalise_range(grey, 0.0, top)


def _classify(exc: BaseException) -> UnreadableImageError:
    text = f"{type(exc).__name__}: {exc}".lower()
    if isinstance(exc, EOFError) or any(hint in text for hint in _TRUNCATION_HINTS):
        return UnreadableImageError("truncated file", type(exc).__name__)
    return UnreadableImageError("corrupt data", type(exc).__name__)


def _has_image_header(fp: IO[bytes]) -> bool:
    """Whether the header alone describes an image.

    pydicom returns an empty dataset when encapsulated pixel data ends before
    its delimiter, so a cut-off compressed file is re-read up to the pixels.
    """
    try:
        fp.seek(0)
        ds = pydicom.dcmread(fp, force=True, stop_before_pixels=True)
        return bool(_int(ds, "Rows", 0) and _int(ds, "Columns", 0))
    except _DECODE_ERRORS:
        return False


def _native_pixels(fp: IO[bytes], ds: Dataset) -> np.ndarray | None:
    """Frame 0 of uncompressed little-endian grey pixel data, as a zero-copy view.

    ``ds`` was read up to (not including) the pixel data, so ``fp`` stands at
    the PixelData element. Reading a 10 MB radiograph through pydicom copies
    it three times (buffer, array, unused-bit masking); a view costs nothing
    and is all the downsampler needs. Anything unusual returns ``None`` and
    takes pydicom's general path.
    """
    if not isinstance(fp, io.BytesIO):
        return None
    ts = _ensure_transfer_syntax(ds)
    alloc, stored = _int(ds, "BitsAllocated", 0), _int(ds, "BitsStored", 0)
    rows, cols = _int(ds, "Rows", 0), _int(ds, "Columns", 0)
    signed = _int(ds, "PixelRepresentation", 0) == 1
    if (ts not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian) or alloc not in (8, 16)
            or _int(ds, "SamplesPerPixel", 1) != 1 or not 0 < stored <= alloc
            or (signed and stored != alloc) or not rows or not cols):
        return None
    data = fp.getvalue()  # the caller's bytes, not a copy
    pos = fp.tell()
    if data[pos:pos + 4] != b"\xe0\x7f\x10\x00":
        return None
    if ts == ExplicitVRLittleEndian:
        if data[pos + 4:pos + 6] not in (b"OW", b"OB"):
            return None
        start, length = pos + 12, int.from_bytes(data[pos + 8:pos + 12], "little")
    else:
        start, length = pos + 8, int.from_bytes(data[pos + 4:pos + 8], "little")
    count = rows * cols
    if length == 0xFFFFFFFF or length < count * alloc // 8 or len(data) < start + length:
        return None  # undefined length, or truncated: the general path says which
    dtype = np.dtype(("<i" if signed else "<u") + str(alloc // 8))
    raw = np.frombuffer(data, dtype=dtype, count=count, offset=start).reshape(rows, cols)
    if stored < alloc and int(raw.max()) >> stored:
        raw = raw & np.array((1 << stored) - 1, dtype=dtype)  # overlay bits set: mask
    return raw


def load_dicom(fp: IO[bytes], target_size: int | None = None) -> XrayImage:
    """Decode the first frame of a DICOM file object into an :class:`XrayImage`."""
    try:
        ds = pydicom.dcmread(fp, force=True, stop_before_pixels=True)
        native = _native_pixels(fp, ds)
        if native is None:
            fp.seek(0)
            ds = pydicom.dcmread(fp, force=True)
        photometric = str(ds.get("PhotometricInterpretation", "")).strip()
        rows, cols = _int(ds, "Rows", 0), _int(ds, "Columns", 0)
    except _DECODE_ERRORS as exc:
        raise _classify(exc) from None
    if native is None and not any(k in ds for k in _PIXEL_KEYWORDS):
        if (rows and cols) or _has_image_header(fp):
            raise UnreadableImageError("truncated file", "pixel data cut off")
        raise UnreadableImageError("no pixel data")
    samples = _int(ds, "SamplesPerPixel", 1)
    check_size(rows, cols, samples)
    if not photometric and samples == 1:  # old (ACR-NEMA style) files omit it
        photometric = ds.PhotometricInterpretation = "MONOCHROME2"
    if photometric not in _GREY + _COLOUR + ("PALETTE COLOR",):
        raise UnreadableImageError(
            f"unsupported photometric interpretation {photometric[:16] or '(none)'}"
        )
    try:
        ts = _ensure_transfer_syntax(ds)
        _check_decodable(ts)
        raw, reduced = (native, 1) if native is not None else first_frame(ds, ts, target_size)
        factor = pixels.reduction_factor(raw.shape[:2], target_size)
        if raw.ndim == 3 or photometric == "PALETTE COLOR":
            out = colour_to_unit(raw, ds, factor)
        else:
            out = grey_to_unit(raw, ds, factor)
    except UnreadableImageError:
        raise
    except _DECODE_ERRORS as exc:
        raise _classify(exc) from None
    meta = ImageMeta(
        format="dicom",
        original_shape=(rows, cols),
        frames=max(_int(ds, "NumberOfFrames", 1), 1),
        photometric=photometric,
        bits_stored=_int(ds, "BitsStored", 8 * raw.dtype.itemsize),
        reduced_by=reduced * factor,
        dicom=header_fields(ds),
    )
    return XrayImage(np.ascontiguousarray(out, dtype=np.float32), meta)
