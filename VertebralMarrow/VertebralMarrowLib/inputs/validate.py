"""Checks at the edge: every input file is looked at once, before MRML, ITK or VTK touch it.

A native reader that meets a truncated file, a 2-D picture, spacing in metres or a label of
2^31 - 1 can abort the whole process (inside Slicer: the application). Here such files are
refused with an `InputError` that names the file and the fix: the header is read first
(SimpleITK, which raises rather than aborts), sizes and label values are bounded before
anything large is allocated, and compressed payloads are checked to be complete.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..core.sequences import SEQUENCES
from ..errors import InputError

# Voxel spacing of clinical MRI and CT lies between about 0.2 and 10 mm. Far below: the file
# is written in metres (or is not a clinical image); far above: in micrometres or corrupt.
MIN_SPACING_MM = 0.05
MAX_SPACING_MM = 100.0
# About 4 GB as float32: more than any whole-body study, less than what would exhaust memory.
MAX_VOXELS = 1 << 30
# Slicer colour tables and TotalSegmentator-style labelmaps stay far below this; a label value
# near 2^31 makes the labelmap import allocate per possible value and ends in std::bad_alloc.
MAX_LABEL = 65535


@dataclass
class ImageInfo:
    dimension: int
    size: Tuple[int, ...]
    spacing_mm: Tuple[float, ...]
    components: int


def check_readable(path, what: str) -> Path:
    """The path names a non-empty file this process may read."""
    if path is None or (isinstance(path, str) and not path.strip()):
        raise InputError(f"{what}: no file given")
    try:
        path = Path(path)
    except TypeError:
        raise InputError(f"{what}: expected a file path, got {type(path).__name__} {path!r}") from None
    if not path.exists():
        raise InputError(f"{what} file not found: {path}")
    if not path.is_file():
        raise InputError(f"{what} {path} is a folder, not a file")
    if not os.access(path, os.R_OK):
        raise InputError(f"{what} {path} cannot be read (permission denied)")
    if path.stat().st_size == 0:
        raise InputError(f"{what} {path} is empty (0 bytes)")
    return path


def check_image(path, what: str, kind: str = "volume", complete: bool = True) -> ImageInfo:
    """Check an image file before MRML reads it. `kind`: "volume" (3-D scalar), "dwi" (3-D or
    4-D scalar), "labelmap" (3-D scalar of non-negative integer labels) or "segmentation" (a
    Slicer .seg.nrrd: 3-D, one component per layer). `complete=False` leaves the payload of
    NRRD and MHA files to the caller's own SimpleITK read, which raises on a short one (NIfTI's
    reader does not, so its size is always checked). A DWI in a layout inputs.dwi_files reads
    itself (uncompressed NIfTI-1, raw NRRD) is checked from that reader's parse of its header:
    the `adc` command then never imports SimpleITK."""
    path = check_readable(path, what)
    if kind == "dwi":
        from .dwi_files import raw_layout

        layout = raw_layout(path)
        if layout is not None:
            info = layout.info()
            _check_shape(path, what, kind, info)
            _check_spacing(path, what, info)
            layout.check_complete(what)
            return info
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"cannot read {what} {path}: {_itk_reason(exc)}; is it a complete NRRD, NIfTI or MHA file?") from None
    info = ImageInfo(reader.GetDimension(), tuple(reader.GetSize()), tuple(reader.GetSpacing()),
                     reader.GetNumberOfComponents())
    _check_shape(path, what, kind, info)
    _check_spacing(path, what, info)
    _check_complete(path, what, complete)
    if kind == "segmentation":
        _check_segment_metadata(path, reader)
    return info


def _itk_reason(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _check_shape(path: Path, what: str, kind: str, info: ImageInfo) -> None:
    allowed = (3, 4) if kind == "dwi" else (3,)
    if info.dimension == 2:
        raise InputError(f"{what} {path} is a 2-D image (one slice or a picture); a 3-D volume is needed here")
    if info.dimension not in allowed:
        needed = "a 3-D volume (or one 4-D file of all b-values)" if kind == "dwi" else "a 3-D volume"
        raise InputError(f"{what} {path} is {info.dimension}-D; {needed} is needed here")
    if info.components != 1 and kind not in ("segmentation", "dwi"):  # a DWMRI NRRD keeps its b-values as components
        raise InputError(f"{what} {path} has {info.components} values per voxel (an RGB or vector image); "
                         f"a scalar (grey-level) volume is needed here")
    voxels = int(np.prod([int(s) for s in info.size], dtype=np.int64)) * max(info.components, 1)
    if min(info.size) < 1:
        raise InputError(f"{what} {path} has no voxels (size {' x '.join(map(str, info.size))})")
    if voxels > MAX_VOXELS:
        raise InputError(f"{what} {path} has {voxels:,} voxels (size {' x '.join(map(str, info.size))}), "
                         f"more than {MAX_VOXELS:,}; crop or downsample it")


def _check_spacing(path: Path, what: str, info: ImageInfo) -> None:
    spacing = np.asarray(info.spacing_mm[:3], float)
    text = " x ".join(f"{s:g}" for s in spacing)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InputError(f"{what} {path} has voxel spacing {text} mm; spacing must be finite and positive")
    if spacing.min() < MIN_SPACING_MM:
        raise InputError(
            f"{what} {path} has voxel spacing {text} mm, below {MIN_SPACING_MM} mm: the spacing is probably in metres "
            f"(x 1000 gives {' x '.join(f'{s * 1000:g}' for s in spacing)} mm); write the file with spacing in mm"
        )
    if spacing.max() > MAX_SPACING_MM:
        raise InputError(f"{what} {path} has voxel spacing {text} mm, above {MAX_SPACING_MM:g} mm; "
                         f"check the file's spacing (it must be in mm)")


def _check_complete(path: Path, what: str, read_all: bool) -> None:
    """The whole payload is there. gzip streams are decompressed (and discarded) to their end
    marker; NIfTI payloads are compared with the size the header promises; everything else is
    read by SimpleITK, whose NRRD and MHA readers count the bytes they get."""
    name = path.name.lower()
    if name.endswith(".nii.gz") or name.endswith(".nii"):
        _check_nifti_size(path, what)
        return
    if not read_all:
        return
    import SimpleITK as sitk

    try:
        sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"cannot read {what} {path}: {_itk_reason(exc)}; the file is incomplete or damaged") from None


def _check_nifti_size(path: Path, what: str) -> None:
    compressed = path.name.lower().endswith(".gz")
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as stream:
            header = stream.read(348)
            if len(header) < 348:
                raise InputError(f"{what} {path} is too short for a NIfTI header; the file is incomplete")
            endian = "<" if struct.unpack("<i", header[:4])[0] == 348 else ">"
            dims = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            vox_offset = int(struct.unpack(endian + "f", header[108:112])[0])
            count = int(np.prod([max(int(d), 1) for d in dims[1:1 + max(int(dims[0]), 0)]], dtype=np.int64))
            expected = max(vox_offset, 348) + count * max(int(bitpix), 0) // 8
            total = len(header) if compressed else path.stat().st_size
            while compressed:  # gzip: read to its end to count
                block = stream.read(1 << 22)
                if not block:
                    break
                total += len(block)
    except (EOFError, OSError, zlib.error, struct.error) as exc:
        raise InputError(f"cannot read {what} {path}: {exc}; the file is incomplete or damaged") from None
    if total < expected:
        raise InputError(f"{what} {path} holds {total:,} bytes of image data where its header promises {expected:,}; "
                         f"the file is truncated")


def _check_segment_metadata(path: Path, reader) -> None:
    """Segment label values in range and segment names unique in a .seg.nrrd."""
    keys = set(reader.GetMetaDataKeys())
    names: List[str] = []
    n = 0
    while f"Segment{n}_Name" in keys or f"Segment{n}_ID" in keys:
        name = reader.GetMetaData(f"Segment{n}_Name") if f"Segment{n}_Name" in keys else f"Segment{n}"
        label_key = f"Segment{n}_LabelValue"
        if label_key in keys:
            try:
                value = int(reader.GetMetaData(label_key))
            except ValueError:
                raise InputError(f"segmentation {path}: segment '{name}' has label value "
                                 f"'{reader.GetMetaData(label_key)}', not an integer") from None
            if not 1 <= value <= MAX_LABEL:
                raise InputError(f"segmentation {path}: segment '{name}' has label value {value}; "
                                 f"label values must lie in 1-{MAX_LABEL}")
        names.append(name)
        n += 1
    check_unique_names(names, f"segmentation {path}")


def check_unique_names(names: Sequence[str], where: str) -> None:
    """Names that key results must be unique: two segments called 'L2' would swap rows."""
    seen, duplicates = set(), []
    for name in names:
        if name in seen and name not in duplicates:
            duplicates.append(name)
        seen.add(name)
    if duplicates:
        raise InputError(f"{where} has several segments named {', '.join(repr(d) for d in duplicates)}; "
                         f"give every segment its own name")


def check_labels(array: np.ndarray, path, what: str) -> None:
    """A labelmap's values are whole numbers in 0..MAX_LABEL with at least one label."""
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not finite.all():
            raise InputError(f"{what} {path} holds NaN or infinite values; a labelmap holds whole numbers")
        if np.any(array != np.round(array)):
            raise InputError(f"{what} {path} holds fractional values; a labelmap holds whole-number labels "
                             f"(is this an image rather than a labelmap?)")
    if array.size == 0:
        raise InputError(f"{what} {path} has no voxels")
    low, high = array.min(), array.max()
    if low < 0:
        raise InputError(f"{what} {path} holds negative labels (down to {low:.0f}); labels are 0 (background) "
                         f"or positive whole numbers")
    if high > MAX_LABEL:
        raise InputError(f"{what} {path} holds label {high:.0f}; labels must lie in 0-{MAX_LABEL}")
    if high == 0:
        raise InputError(f"{what} {path} has no labels (all voxels are 0)")


def read_text(path, what: str) -> str:
    """A small text file as UTF-8, refused in one line when it is not text."""
    path = check_readable(path, what)
    data = path.read_bytes()
    if b"\0" in data[:4096]:
        raise InputError(f"{what} {path} is a binary file, not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None


# Clinical DWI uses b from 0 to about 2000 s/mm^2 (research protocols up to about 5000).
MAX_BVALUE = 10000.0
MIN_TOP_BVALUE = 50.0


def check_bvalues(bvalues: Sequence[float], where: str) -> List[float]:
    """b-values in s/mm^2: finite, >= 0 and not off by a factor of 1000."""
    values = []
    for value in bvalues:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not np.isfinite(value):
            raise InputError(f"{where}: b-value {value!r} is not a finite number (s/mm^2)")
        if value < 0:
            raise InputError(f"{where}: b-value {value:g} is negative; b-values are >= 0 s/mm^2")
        values.append(float(value))
    listed = ", ".join(f"{b:g}" for b in values)
    if values and max(values) > MAX_BVALUE:
        raise InputError(f"{where}: b-values [{listed}] reach above {MAX_BVALUE:g} s/mm^2; are they in s/m^2 or "
                         f"x 1000? give them in s/mm^2 (e.g. 0,50,400,800)")
    if values and 0 < max(values) < MIN_TOP_BVALUE:
        raise InputError(f"{where}: the highest b-value is {max(values):g} s/mm^2, too low for diffusion: are they in "
                         f"ms/um^2 (10^3 s/mm^2)? give them in s/mm^2 (e.g. 0,50,400,800)")
    return values


def check_dwi_paths(paths, bvalues) -> Tuple[List[Path], List[float]]:
    """DWI file paths (one path is a list of one) each given once, and b-values checked."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise InputError("no DWI file given")
    resolved = [p.resolve() for p in paths]
    repeated = [p for p, r in zip(paths, resolved) if resolved.count(r) > 1]
    if repeated:
        raise InputError(f"DWI file {repeated[0]} is given more than once; give each b-value's own file")
    if isinstance(bvalues, (str, bytes)):
        raise InputError(f"b-values must be a list of numbers (s/mm^2), got {bvalues!r}")
    return paths, check_bvalues(list(bvalues or ()), "b-values")


def check_signal(array: np.ndarray, what: str) -> None:
    """A DWI image must hold some signal: an all-NaN or all-zero image would be 'used' for nothing.
    Slice by slice, so a memory-mapped whole-body volume gets no whole-volume temporaries."""
    any_finite = False
    for plane in np.asarray(array).reshape((-1,) + np.shape(array)[-2:]):
        finite = np.isfinite(plane)
        if np.any(plane[finite] > 0):
            return
        any_finite = any_finite or bool(finite.any())
    if not any_finite:
        raise InputError(f"{what} has no finite value (all NaN); it cannot enter the fit")
    raise InputError(f"{what} has no positive signal; it cannot enter the fit")


ROLES = ("lesion", "reference", "disc", "muscle", "ignore")  # segment roles; mrml re-exports them


def check_roles(roles: dict, where: str) -> None:
    """Roles given by segment name must be known: an unknown one would drop the segment."""
    for name, role in roles.items():
        if not isinstance(name, str):
            raise InputError(f"{where}: segment names are text, got {name!r}")
        if role not in ROLES:
            raise InputError(f"{where}[{name!r}]: role {role!r} unknown; use one of {', '.join(ROLES)}")


def check_study_nodes(study) -> None:
    """The study's nodes are MRML nodes of the right kind (not file names or arrays)."""
    segmentation = study.segmentation
    if segmentation is None or not hasattr(segmentation, "IsA") or not segmentation.IsA("vtkMRMLSegmentationNode"):
        raise InputError(f"StudyNodes.segmentation must be a segmentation node (vtkMRMLSegmentationNode), "
                         f"got {type(segmentation).__name__}")
    dwi = study.dwi
    if dwi is None or hasattr(dwi, "IsA") or isinstance(dwi, (str, bytes)):
        raise InputError(f"StudyNodes.dwi must be a list of volume nodes, got {type(dwi).__name__}")
    for name in ("adc", *(sequence.key for sequence in SEQUENCES)):
        _check_volume_node(getattr(study, name), f"StudyNodes.{name}")
    for index, node in enumerate(dwi):
        _check_volume_node(node, f"StudyNodes.dwi[{index}]")
    if isinstance(study.bvalues, (str, bytes)):
        raise InputError(f"StudyNodes.bvalues must be a list of numbers (s/mm^2), got {study.bvalues!r}")
    if dwi:
        check_bvalues(list(study.bvalues), "StudyNodes.bvalues")
    check_roles_and_spread(study, "StudyNodes")


def check_roles_and_spread(study, where: str) -> None:
    """`roles` and `spread` of a StudyFiles or StudyNodes: dicts keyed by segment name, known roles."""
    for name in ("roles", "spread"):
        if not isinstance(getattr(study, name), dict):
            raise InputError(f"{where}.{name} must be a dict keyed by segment name, got {getattr(study, name)!r}")
    check_roles(study.roles, f"{where}.roles")


def _check_volume_node(node, where: str) -> None:
    if node is None:
        return
    if not hasattr(node, "IsA") or not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLLabelMapVolumeNode"):
        kind = node.GetClassName() if hasattr(node, "GetClassName") else type(node).__name__
        raise InputError(f"{where} must be a scalar volume node (vtkMRMLScalarVolumeNode), got {kind}")
    image = node.GetImageData()
    if image is None or image.GetNumberOfScalarComponents() != 1:
        raise InputError(f"{where} '{node.GetName()}' holds no scalar image data")
    if min(image.GetDimensions()) < 1:
        raise InputError(f"{where} '{node.GetName()}' is empty")
    spacing = np.asarray(node.GetSpacing(), float)
    if not np.all(np.isfinite(spacing)) or spacing.min() < MIN_SPACING_MM or spacing.max() > MAX_SPACING_MM:
        raise InputError(f"{where} '{node.GetName()}' has voxel spacing {' x '.join(f'{v:g}' for v in spacing)} mm; "
                         f"it must lie in {MIN_SPACING_MM}-{MAX_SPACING_MM:g} mm (metres in the file?)")


def check_grid_size(voxels: float, what: str) -> None:
    """Refuse an export whose grid would exceed MAX_VOXELS before it is allocated."""
    if not np.isfinite(voxels) or voxels > MAX_VOXELS:
        raise InputError(f"{what} would need {voxels:.3g} voxels; the segmentation and the volume do not share "
                         f"units or place (check both files' spacing and origin)")


def check_output_not_input(outputs: Sequence[Tuple[str, Optional[Path]]], inputs: Sequence[Tuple[str, Path]]) -> None:
    """No output may be, or contain, an input: a run never writes over what it reads."""
    for out_flag, out in outputs:
        if out is None:
            continue
        out_resolved = Path(out).resolve()
        for in_flag, path in inputs:
            if path is None:
                continue
            source = Path(path).resolve()
            if source == out_resolved:
                raise InputError(f"{out_flag} {out} is also the input {in_flag} {path}; write the output elsewhere")
            if out_resolved in source.parents:
                raise InputError(f"{out_flag} {out} contains the input {in_flag} {path}, which the run would replace; "
                                 f"copy the inputs elsewhere or choose another output folder")
