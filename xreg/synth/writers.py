"""Write phantom pixels as 16-bit PNG, 8-bit JPEG or DICOM (CR/DX) files.

Every writer takes float pixels in [0, 1], bone bright, and produces a file
that :func:`xreg.io.load_image` decodes back to the same picture within
quantisation error. Output bytes depend only on the arguments, so a seeded
dataset is byte-identical from run to run. Files are written under a
temporary name and renamed into place.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from xreg.errors import ConfigError

#: DICOM SOP classes: CR Image Storage, DX Image Storage - For Presentation.
SOP_CLASSES = {"CR": "1.2.840.10008.5.1.4.1.1.1", "DX": "1.2.840.10008.5.1.4.1.1.1.1"}
COMPRESSIONS = ("none", "rle", "j2k")


@dataclass(frozen=True)
class DicomHeader:
    """Identifying header values of one synthetic DICOM file (no real patient data)."""

    patient_id: str
    patient_name: str
    study_uid: str
    series_uid: str
    sop_uid: str
    accession: str
    study_date: str               # YYYYMMDD
    study_time: str               # HHMMSS
    view_position: str            # AP, PA, LL, RL
    laterality: str               # ImageLaterality: L, R or U
    body_part_examined: str       # may be empty or wrong on purpose, like real archives
    series_number: int = 1
    instance_number: int = 1
    field_mm: float = 350.0       # detector field; gives ImagerPixelSpacing


@dataclass(frozen=True)
class DicomVariant:
    """How the pixels are stored: the knobs real archives differ in."""

    modality: str = "CR"            # CR or DX
    photometric: str = "MONOCHROME2"  # or MONOCHROME1 (stored inverted)
    rescale: bool = False           # write RescaleSlope/Intercept (non-identity)
    voi: bool = False               # write WindowCenter/Width
    bits_stored: int = 12           # 12 or 16, always in 16 allocated bits
    compression: str = "none"       # none, rle (RLE Lossless), j2k (JPEG 2000 Lossless)

    def __post_init__(self) -> None:
        if self.modality not in SOP_CLASSES:
            raise ConfigError(f"DICOM modality must be CR or DX, not {self.modality!r}")
        if self.photometric not in ("MONOCHROME1", "MONOCHROME2"):
            raise ConfigError(f"photometric must be MONOCHROME1/2, not {self.photometric!r}")
        if self.bits_stored not in (12, 16):
            raise ConfigError(f"bits_stored must be 12 or 16, not {self.bits_stored}")
        if self.compression not in COMPRESSIONS:
            raise ConfigError(f"compression must be one of {COMPRESSIONS}, "
                              f"not {self.compression!r}")


def _check(image: np.ndarray) -> np.ndarray:
    if image.ndim != 2 or image.size == 0:
        raise ConfigError(f"expected a non-empty 2-D image, got shape {image.shape}")
    return np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)


def _quantise(image: np.ndarray, top: int, dtype: type[np.generic]) -> np.ndarray:
    return np.rint(_check(image) * np.float32(top)).astype(dtype)


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def write_png16(image: np.ndarray, path: str | os.PathLike[str]) -> None:
    """Write ``image`` as a 16-bit greyscale PNG (bone bright)."""
    target = Path(path)
    tmp = _tmp(target)
    Image.fromarray(_quantise(image, 65535, np.uint16)).save(tmp, format="PNG")
    os.replace(tmp, target)


def write_jpeg(image: np.ndarray, path: str | os.PathLike[str], quality: int = 92) -> None:
    """Write ``image`` as an 8-bit greyscale baseline JPEG at ``quality`` (1-100)."""
    if not 1 <= quality <= 100:
        raise ConfigError(f"JPEG quality must be 1..100, not {quality}")
    target = Path(path)
    tmp = _tmp(target)
    Image.fromarray(_quantise(image, 255, np.uint8)).save(tmp, format="JPEG", quality=quality)
    os.replace(tmp, target)


def _rescale_for(variant: DicomVariant) -> tuple[float, float]:
    # Values a CR reader might carry: a half-unit slope and a negative offset.
    return (0.5, -1024.0) if variant.rescale else (1.0, 0.0)


def dicom_pixels(image: np.ndarray, variant: DicomVariant) -> np.ndarray:
    """Stored uint16 values for ``image``: quantised to BitsStored, inverted for MONOCHROME1."""
    top = 2**variant.bits_stored - 1
    stored = _quantise(image, top, np.uint16)
    if variant.photometric == "MONOCHROME1":
        stored = (top - stored).astype(np.uint16)
    return stored


def _dataset(image: np.ndarray, header: DicomHeader, variant: DicomVariant):  # type: ignore[no-untyped-def]
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian

    stored = dicom_pixels(image, variant)
    rows, cols = stored.shape
    sop_class = SOP_CLASSES[variant.modality]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(header.sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID("2.25.275741864483510678566144889372061815320")
    meta.ImplementationVersionName = "XREG_SYNTH_1"

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = header.sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = header.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = header.study_time
    ds.AccessionNumber = header.accession
    ds.Modality = variant.modality
    ds.Manufacturer = "XREG PHANTOM"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "SYNTHETIC PHANTOM"
    ds.PatientName = header.patient_name
    ds.PatientID = header.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = header.body_part_examined
    ds.ViewPosition = header.view_position
    ds.StudyInstanceUID = header.study_uid
    ds.SeriesInstanceUID = header.series_uid
    ds.StudyID = header.accession[-8:]
    ds.SeriesNumber = header.series_number
    ds.InstanceNumber = header.instance_number
    ds.PatientOrientation = ""
    ds.ImageLaterality = header.laterality
    if variant.modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    spacing = f"{header.field_mm / max(rows, cols):.6f}"
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = variant.photometric
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = 16
    ds.BitsStored = variant.bits_stored
    ds.HighBit = variant.bits_stored - 1
    ds.PixelRepresentation = 0
    slope, intercept = _rescale_for(variant)
    if variant.rescale:
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "US"
    if variant.voi:
        # A window over the whole stored range in output units: the LINEAR
        # function of PS3.3 C.11.2.1.2 then maps it exactly onto [0, 1].
        low = intercept
        high = (2**variant.bits_stored - 1) * slope + intercept
        ds.WindowCenter = f"{(low + high) / 2 + 0.5:.4f}"
        ds.WindowWidth = f"{high - low + 1:.4f}"
    return ds, stored


def write_dicom(
    image: np.ndarray,
    path: str | os.PathLike[str],
    header: DicomHeader,
    variant: DicomVariant = DicomVariant(),
) -> None:
    """Write ``image`` as a single-frame DICOM Part 10 file.

    Compressed variants go through pydicom's own lossless encoders (RLE
    Lossless natively; JPEG 2000 Lossless needs pylibjpeg-openjpeg).
    """
    from pydicom.pixels.encoders.base import get_encoder
    from pydicom.uid import JPEG2000Lossless, RLELossless

    ds, stored = _dataset(image, header, variant)
    if variant.compression == "none":
        ds.PixelData = stored.astype("<u2").tobytes()
        ds["PixelData"].VR = "OW"
    else:
        syntax = RLELossless if variant.compression == "rle" else JPEG2000Lossless
        plugin = "pylibjpeg"
        if syntax == RLELossless and "pylibjpeg" not in get_encoder(syntax).available_plugins:
            # pydicom's own RLE encoder writes the same bytes, about 12x slower.
            plugin = "pydicom"
        try:
            ds.compress(syntax, stored, encoding_plugin=plugin, generate_instance_uid=False)
        except (RuntimeError, ValueError, ImportError) as exc:
            raise ConfigError(f"cannot encode {variant.compression} DICOM: {exc}") from exc
    target = Path(path)
    tmp = _tmp(target)
    ds.save_as(tmp, enforce_file_format=True)
    os.replace(tmp, target)
