"""DWI files read without MRML and without copies: numpy and SimpleITK only, so that the
`adc` command starts fast and whole-body DWI stays out of memory.

Uncompressed NIfTI-1 and raw NRRD are memory-mapped (the fit reads them chunk by chunk and
lets the pages go); anything else SimpleITK reads is read once and viewed, never copied.
Geometry (origin, spacing, direction) always comes from SimpleITK's reading of the header.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from .validate import ImageInfo, read_text

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

# NIfTI-1 datatype codes and NRRD type names -> numpy type characters
_NIFTI_TYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8", 1280: "u8"}
_NRRD_TYPES = {
    "f4": ("float",), "f8": ("double",), "i1": ("signed char", "int8", "int8_t"),
    "u1": ("uchar", "unsigned char", "uint8", "uint8_t"),
    "i2": ("short", "short int", "signed short", "signed short int", "int16", "int16_t"),
    "u2": ("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"),
    "i4": ("int", "signed int", "int32", "int32_t"), "u4": ("uint", "unsigned int", "uint32", "uint32_t"),
    "i8": ("longlong", "long long", "long long int", "int64", "int64_t"),
    "u8": ("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"),
}
_NRRD_TYPE_OF = {name: code for code, names in _NRRD_TYPES.items() for name in names}
_SPATIAL_KINDS = {"domain", "space"}


_QUIET_SIMPLEITK: list = []


def quiet_simpleitk() -> None:
    """Silence ITK's own warnings whenever SimpleITK gets imported (the command line's default;
    the `adc` command imports it only when a file needs it)."""
    _QUIET_SIMPLEITK.append(True)


def simpleitk():
    import SimpleITK

    if _QUIET_SIMPLEITK:
        SimpleITK.ProcessObject.GlobalWarningDisplayOff()
    return SimpleITK


@dataclass
class DwiFiles:
    """DWI images (k, j, i) on one grid, one per b-value (s/mm^2), as maps or views."""

    volumes: List[np.ndarray]
    bvalues: List[float]
    ijk_to_ras: np.ndarray
    keep: list = field(default_factory=list)  # SimpleITK images the views look into


def read_dwi_files(paths: Sequence[Path], bvalues: Sequence[float]) -> DwiFiles:
    """Several 3-D files with `bvalues` in the same order, or one 4-D file (b-values from
    `bvalues`, a DWMRI NRRD header, or an FSL .bval/.bvals beside it)."""
    paths = [Path(p) for p in paths]
    if len(paths) == 1:
        volumes, ijk_to_ras, keep = open_image(paths[0], "DWI")
        if len(volumes) > 1:
            values = list(bvalues) or bvalues_from_metadata(paths[0], len(volumes))
            if len(values) != len(volumes):
                raise InputError(f"4-D DWI {paths[0]} has {len(volumes)} volumes but {len(values)} b-values were given")
            return DwiFiles(volumes, [float(v) for v in values], ijk_to_ras, keep)
    if not bvalues:
        raise InputError("--dwi with 3-D files needs --bvalues, one per file in the same order (e.g. --bvalues 0,50,400,800)")
    if len(bvalues) != len(paths):
        raise InputError(f"{len(paths)} DWI files but {len(bvalues)} b-values; give one b-value per file")
    volumes, keep, grid = [], [], None
    for path in paths:
        opened, ijk_to_ras, kept = open_image(path, "DWI")
        if len(opened) != 1:
            raise InputError(f"DWI {path} is 4-D; give several 3-D files or one 4-D file")
        if grid is None:
            grid, shape = ijk_to_ras, opened[0].shape
        elif opened[0].shape != shape or not np.allclose(ijk_to_ras, grid, atol=1e-3):
            raise InputError(f"DWI {path} is not on the grid of {paths[0]}; all b-values must share one grid")
        volumes += opened
        keep += kept
    return DwiFiles(volumes, [float(v) for v in bvalues], grid, keep)


def open_image(path: Path, what: str) -> Tuple[List[np.ndarray], np.ndarray, list]:
    """The 3-D volumes (k, j, i) in an image file (one, or one per entry of its fourth or
    vector axis), its IJK-to-RAS matrix, and what must stay alive for the views."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} file not found: {path}")
    layout = raw_layout(path)
    if layout is not None:  # uncompressed NIfTI-1 or raw NRRD: read here, SimpleITK not even imported
        layout.check_complete(what)
        return layout.volumes(), layout.ijk_to_ras, []
    sitk = simpleitk()

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"cannot read {what} {path}: {str(exc).strip().splitlines()[-1]}") from None
    ijk_to_ras = ijk_to_ras_of_sitk(image)
    array = sitk.GetArrayViewFromImage(image)
    if image.GetDimension() == 4:  # (t, k, j, i)
        volumes = list(array)
    elif image.GetNumberOfComponentsPerPixel() > 1:  # (k, j, i, component)
        volumes = [array[..., n] for n in range(array.shape[-1])]
    elif image.GetDimension() == 3:
        volumes = [array]
    else:
        raise InputError(f"{what} {path} is {image.GetDimension()}-D; a 3-D or 4-D image is needed")
    return volumes, ijk_to_ras, [image]


def ijk_to_ras_of_sitk(image) -> np.ndarray:
    """IJK-to-RAS matrix of a SimpleITK image or of a reader that has read the header."""
    dimension = image.GetDimension()
    spacing = np.array(image.GetSpacing()[:3], float)
    origin = np.array(image.GetOrigin()[:3], float)
    direction = np.array(image.GetDirection(), float).reshape(dimension, dimension)[:3, :3]
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = LPS_TO_RAS @ direction @ np.diag(spacing)
    ijk_to_ras[:3, 3] = LPS_TO_RAS @ origin
    return ijk_to_ras


def bvalues_from_metadata(path: Path, count: int) -> List[float]:
    """b-values of a 4-D DWI from an FSL .bval/.bvals beside it or a Slicer/NRRD DWMRI header."""
    sidecar = bval_sidecar(path)
    if sidecar is not None:
        try:
            values = [float(v) for v in read_text(sidecar, "b-values file").split()]  # not UTF-8: one line
        except ValueError:
            raise InputError(f"{sidecar} is not a list of b-values (numbers separated by spaces)") from None
        if len(values) != count:
            raise InputError(f"{sidecar} lists {len(values)} b-values but {path} has {count} volumes; "
                             "give one b-value per volume (or --bvalues)")
        return values
    reader = simpleitk().ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    keys = set(reader.GetMetaDataKeys())
    if "DWMRI_b-value" in keys:
        b_max = float(reader.GetMetaData("DWMRI_b-value"))
        values = []
        for n in range(count):
            key = f"DWMRI_gradient_{n:04d}"
            if key not in keys:
                break
            gradient = np.array([float(g) for g in reader.GetMetaData(key).split()])
            values.append(b_max * float(gradient @ gradient))  # b = b_max |g|^2
        if len(values) == count:
            return values
    raise InputError(f"4-D DWI {path} carries no b-values (no DWMRI header, no .bval or .bvals beside it); give --bvalues")


def bval_sidecar(path: Path) -> Optional[Path]:
    """FSL's b-value file beside a DWI: NAME.bval (dcm2niix) or NAME.bvals (FSL's own)."""
    name = path.name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            for extension in (".bval", ".bvals"):
                candidate = path.with_name(name[: -len(suffix)] + extension)
                if candidate.is_file():
                    return candidate
    return None


# --- memory maps ----------------------------------------------------------------------------
# Uncompressed NIfTI-1 and raw NRRD, header and geometry read here; anything unusual (scaled
# NIfTI, qform and sform that disagree, NRRD spaces other than RAS/LPS, detached lists) is left
# to SimpleITK, so the geometry is always the one ITK (and so Slicer) gives.


@dataclass
class RawLayout:
    """Where an uncompressed NIfTI-1 or raw NRRD keeps its voxels, from its header alone."""

    data_path: Path
    offset: int
    dtype: np.dtype
    shape: Tuple[int, ...]         # numpy order, slowest axis first
    list_axis: Optional[int]       # numpy axis of a 4-D file's non-spatial axis
    ijk_to_ras: np.ndarray

    def volumes(self) -> List[np.ndarray]:
        """The 3-D volumes (k, j, i), memory-mapped."""
        mapped = np.memmap(self.data_path, self.dtype, "r", self.offset, self.shape)
        if self.list_axis is None:
            return [mapped]
        return list(np.moveaxis(mapped, self.list_axis, 0))

    def info(self) -> ImageInfo:
        """What SimpleITK's header read would report, for the checks of validate.check_image."""
        spacing = tuple(float(v) for v in np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0))
        return ImageInfo(len(self.shape), tuple(self.shape[::-1]), spacing + (1.0,) * (len(self.shape) - 3), 1)

    def check_complete(self, what: str) -> None:
        expected = self.offset + int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        total = self.data_path.stat().st_size
        if total < expected:
            raise InputError(f"{what} {self.data_path} holds {total:,} bytes where its header promises {expected:,}; "
                             f"the file is truncated")


def raw_layout(path: Path) -> Optional[RawLayout]:
    """The layout of a file this module reads itself (uncompressed NIfTI-1, raw NRRD), else None."""
    name = Path(path).name.lower()
    if name.endswith(".nii"):
        return _nifti_layout(Path(path))
    if name.endswith((".nrrd", ".nhdr")):
        return _nrrd_layout(Path(path))
    return None


def _nifti_layout(path: Path) -> Optional[RawLayout]:
    with open(path, "rb") as handle:
        header = handle.read(348)
    if len(header) < 348:
        return None
    for endian in "<>":
        if struct.unpack(endian + "i", header[:4])[0] == 348:
            break
    else:
        return None  # NIfTI-2 or not NIfTI
    dims = struct.unpack(endian + "8h", header[40:56])
    datatype = struct.unpack(endian + "h", header[70:72])[0]
    pixdim = struct.unpack(endian + "8f", header[76:108])
    offset, slope, intercept = struct.unpack(endian + "3f", header[108:120])
    scaled = slope not in (0.0, 1.0) or (slope != 0.0 and intercept != 0.0)
    if datatype not in _NIFTI_TYPES or scaled or dims[0] not in (3, 4) or min(dims[1:dims[0] + 1]) < 1:
        return None
    ijk_to_ras = _nifti_grid(header, endian, pixdim)
    if ijk_to_ras is None:
        return None
    shape = tuple(int(d) for d in dims[1:dims[0] + 1])[::-1]  # x fastest on disk
    return RawLayout(path, int(offset), np.dtype(endian + _NIFTI_TYPES[datatype]), shape,
                     0 if dims[0] == 4 else None, ijk_to_ras)


def _nifti_grid(header: bytes, endian: str, pixdim) -> Optional[np.ndarray]:
    """IJK-to-RAS (NIfTI's world is RAS) from the sform or the qform; None when neither is set
    or they disagree (ITK's choice between them is then SimpleITK's to make)."""
    qform_code, sform_code = struct.unpack(endian + "2h", header[252:256])
    b, c, d, *offset = struct.unpack(endian + "6f", header[256:280])
    grids = []
    if sform_code > 0:
        sform = np.eye(4)
        sform[:3] = np.array(struct.unpack(endian + "12f", header[280:328]), float).reshape(3, 4)
        grids.append(sform)
    if qform_code > 0:
        a = np.sqrt(max(0.0, 1.0 - (b * b + c * c + d * d)))
        rotation = np.array([
            [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
            [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
            [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b],
        ])
        qfac = -1.0 if pixdim[0] < 0 else 1.0
        qform = np.eye(4)
        qform[:3, :3] = rotation @ np.diag([pixdim[1], pixdim[2], qfac * pixdim[3]])
        qform[:3, 3] = offset
        grids.append(qform)
    if not grids or (len(grids) == 2 and not np.allclose(grids[0], grids[1], atol=1e-4)):
        return None
    return grids[0]


def _nrrd_layout(path: Path) -> Optional[RawLayout]:
    with open(path, "rb") as handle:
        head = handle.read(1 << 16)
    if not head.startswith(b"NRRD"):
        return None
    end = head.find(b"\n\n")
    text = head[: end if end >= 0 else len(head)].decode("latin-1")
    fields = {}
    for line in text.splitlines()[1:]:
        if line.startswith("#") or ":=" in line or ": " not in line:
            continue
        key, value = line.split(": ", 1)
        fields[key.strip().lower()] = value.strip()
    if fields.get("encoding", "").lower() != "raw" or fields.get("byte skip", "0") != "0" or fields.get("line skip", "0") != "0":
        return None
    code = _NRRD_TYPE_OF.get(fields.get("type", "").lower())
    sizes = [int(v) for v in fields.get("sizes", "").split()]
    if code is None or len(sizes) not in (3, 4) or min(sizes) < 1:
        return None
    if "data file" in fields or "datafile" in fields:
        data = fields.get("data file", fields.get("datafile"))
        if re.search(r"\s|%", data) or data.upper().startswith("LIST"):
            return None
        data_path, offset = path.parent / data, 0
    elif end >= 0:
        data_path, offset = path, end + 2
    else:
        return None
    kinds = fields.get("kinds", "").lower().split()
    other = [n for n, kind in enumerate(kinds) if kind not in _SPATIAL_KINDS] if len(kinds) == len(sizes) else []
    if len(sizes) == 4 and len(other) != 1:
        return None
    ijk_to_ras = _nrrd_grid(fields, [n for n in range(len(sizes)) if n not in other])
    if ijk_to_ras is None or not data_path.is_file():
        return None
    endian = "<" if fields.get("endian", "little").lower() == "little" else ">"
    list_axis = len(sizes) - 1 - other[0] if len(sizes) == 4 else None  # numpy axes run slowest first
    return RawLayout(data_path, offset, np.dtype(endian + code), tuple(sizes[::-1]), list_axis, ijk_to_ras)


def _nrrd_grid(fields: dict, spatial_axes: List[int]) -> Optional[np.ndarray]:
    """IJK-to-RAS from NRRD's space, space directions and space origin (LPS or RAS only)."""
    space = fields.get("space", "").lower()
    flip = {"left-posterior-superior": LPS_TO_RAS, "lps": LPS_TO_RAS,
            "right-anterior-superior": np.eye(3), "ras": np.eye(3)}.get(space)
    vectors = re.findall(r"\(([^)]*)\)|none", fields.get("space directions", ""))
    origin = re.findall(r"\(([^)]*)\)", fields.get("space origin", ""))
    if flip is None or len(origin) != 1 or len(vectors) != len(fields.get("sizes", "").split()):
        return None
    try:
        columns = [np.array([float(v) for v in vectors[axis].split(",")]) for axis in spatial_axes]
        start = np.array([float(v) for v in origin[0].split(",")])
    except (ValueError, IndexError):
        return None
    if any(column.size != 3 for column in columns) or start.size != 3:
        return None
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = flip @ np.column_stack(columns)
    ijk_to_ras[:3, 3] = flip @ start
    return ijk_to_ras
