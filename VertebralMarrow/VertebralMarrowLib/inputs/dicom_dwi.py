"""Read a diffusion-weighted DICOM series into trace-weighted volumes ready for an ADC fit.

`read_dwi_dicom(folder)` walks a folder, reads every file with pydicom and returns one float32
volume per distinct b-value (the geometric mean over diffusion directions), the b-values
from the headers of any vendor, and the voxel-to-RAS matrix Slicer uses.

Supported layouts: classic single-frame images, Siemens mosaics and enhanced multi-frame
objects. The scanner's derived maps (ADC, FA, EXP, computed b-values, ...) are set aside and
listed in `skipped`, never fitted, and so are isotropic images at a b-value that also has
directional images.

The scanner's own trace-weighted images (ImageType TRACEW, or DERIVED with TRACE/ISOTROPIC)
are what many clinical exports hold instead of the directions. They are used as the
per-b-value volumes only when the folder has no original diffusion-weighted image (b > 0) at
all, never mixed with directional images; b=0 then comes from the trace series if it has
one, else from the original b=0 images of the same acquisition.

Runs in Slicer's Python 3.9 with numpy and pydicom only.
"""

from __future__ import annotations

import logging
import math
import struct
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from ..core.adc import group_shells, trace_weighted
from ..errors import InputError

# ImageType / FrameType values that mark an image computed by the scanner, not acquired.
DERIVED_IMAGE_TYPES = {"ADC", "EADC", "TRACEW", "FA", "EXP"}
# ... and values that do so when the image is also flagged DERIVED.
DERIVED_DIFFUSION_TYPES = {"TRACE", "ISOTROPIC", "TENSOR", "COLFA", "CALC_BVALUE"}
# Of those, the trace-weighted signal images: usable when the series has no directions. Any
# other derived value (ADC, FA, a computed b-value, ...) makes the image a map, never fitted,
# even when it also says TRACEW (Siemens computed b-values do).
TRACE_TYPES = {"TRACEW", "TRACE", "ISOTROPIC"}
# b-values below this are "b=0" (Philips stores b=0 volumes as 0.001, 0.002, ...).
NEAR_ZERO_BVALUE = 1.0
# Two images whose positions along the slice normal differ by less than this share a slice.
SAME_SLICE_MM = 0.05
SKIPPED_SHOWN = 5  # skipped files named in an error, the rest counted
BVALUE_TAGS = (
    "(0018,9087) DiffusionBValue, Siemens (0019,100C) or CSA B_value, "
    "GE (0043,1039), Philips (2001,1003)"
)
VENDOR_NAMES = {"siemens": "Siemens", "ge": "GE", "gems": "GE", "philips": "Philips",
                "canon": "Canon", "toshiba": "Toshiba", "hitachi": "Hitachi", "fujifilm": "Fujifilm"}


@dataclass
class DwiSeries:
    """A diffusion series as trace-weighted volumes, one per distinct b-value (ascending)."""

    volumes: list  # float32 arrays, shape (k, j, i) = (slices, rows, columns)
    bvalues: list  # float, s/mm^2, ascending, same order as volumes
    ijk_to_ras: np.ndarray  # 4x4 float64: (i, j, k, 1) voxel index -> RAS mm
    description: str  # e.g. "Siemens MAGNETOM Prisma Fit, syngo MR XA30, classic, 21 images"
    skipped: list  # str, one per file or frame set aside, saying why
    images_per_bvalue: list = field(default_factory=list)  # stored images (files or frames) per b-value


@dataclass
class _SeriesInfo:
    """What one file says about its series; shared by all images read from that file."""

    uid: str
    label: str  # series number and description, for messages
    vendor: str
    model: str
    software: str
    # What the same acquisition shares across its series (originals, trace, ADC): the study,
    # the frame of reference, the protocol and timing; "" or None where the header has none.
    study: str = ""
    frame_of_reference: str = ""
    protocol: str = ""
    echo_time: float | None = None
    repetition_time: float | None = None


@dataclass
class _Image:
    """One 2-D image: a classic file, one frame of an enhanced object or one mosaic tile."""

    pixels: np.ndarray  # float32 (rows, columns), rescaled
    signal_step: float  # one stored intensity unit after rescaling: the floor of the log
    bvalue: float
    position: np.ndarray  # LPS mm of the centre of the first voxel
    orientation: np.ndarray  # 6 direction cosines: along a row, then down a column
    pixel_spacing: tuple  # (between rows, between columns) mm
    slice_spacing: float | None
    isotropic: bool
    layout: str  # classic | mosaic | enhanced
    series: _SeriesInfo
    source: str  # file (and frame), for messages
    stored_image: tuple  # (file, frame): the tiles of a mosaic share one
    trace: str = ""  # derived type (e.g. "TRACEW") of a scanner trace image; "" for an original


@dataclass
class _Scan:
    """Everything gathered while walking the folder."""

    images: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    dicom_images: int = 0
    derived: int = 0
    without_bvalue: int = 0


def read_dwi_dicom(folder) -> DwiSeries:
    """Read the diffusion series in `folder` (searched recursively) into trace-weighted volumes,
    one per shell (b-values that differ by rounding are one, adc.group_shells)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"DICOM folder {folder} does not exist or is not a folder")
    # pydicom's warnings and log messages about real scanners' headers are not the user's
    # business; what was set aside is said in `skipped` and in errors.
    with warnings.catch_warnings(), _quiet_pydicom_log():
        warnings.simplefilter("ignore")
        scan = _Scan()
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            _read_file(path, path.relative_to(folder).as_posix(), scan)
        return _series(scan, folder)


def _series(scan: "_Scan", folder: Path) -> DwiSeries:
    _explain_if_nothing_usable(scan, folder)
    images = _choose_trace_or_originals(scan.images, scan.skipped)
    images = _drop_isotropic_where_directional(images, scan.skipped)
    _require_one_series(images, folder)
    _require_same_grid(images, folder)
    bvalues, shells = group_shells([image.bvalue for image in images])
    if len(bvalues) < 2:
        trace = _trace_label(images)
        what = f", in the scanner's trace images ({trace}) and no b=0 image" if trace else ""
        hint = "; add the series' b=0 images or point to the original diffusion-weighted series" if trace else ""
        raise InputError(
            f"DICOM series in {folder} has only one b-value ({bvalues[0]:g}){what}; "
            f"an ADC fit needs at least two{hint}"
        )
    try:
        slice_of, slice_positions = _slice_layout(images, folder)
        volumes, counts = [], []
        for members in shells:
            at_b = [images[i] for i in members]
            volumes.append(_trace_volume(at_b, slice_of, len(slice_positions), folder))
            counts.append(len({image.stored_image for image in at_b}))
    except InputError as exc:  # a series come out short: the files set aside may be the missing ones
        if not scan.skipped:
            raise
        shown = "; ".join(scan.skipped[:SKIPPED_SHOWN]) + (f" and {len(scan.skipped) - SKIPPED_SHOWN} more"
                                                           if len(scan.skipped) > SKIPPED_SHOWN else "")
        raise InputError(f"{exc} (files skipped: {shown})") from None
    return DwiSeries(
        volumes=volumes,
        bvalues=[float(b) for b in bvalues],
        ijk_to_ras=_ijk_to_ras(images[0], slice_positions),
        description=_describe(images),
        skipped=scan.skipped,
        images_per_bvalue=counts,
    )


@contextmanager
def _quiet_pydicom_log():
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


# ---------------------------------------------------------------------------- reading files


def _read_file(path: Path, name: str, scan: _Scan) -> None:
    """Add the usable images of one file to `scan`, or say in `scan.skipped` why there are none."""
    try:
        with warnings.catch_warnings():
            # Real scanner headers often break VR length rules; that is no reason to refuse them.
            warnings.simplefilter("ignore", UserWarning)
            ds = pydicom.dcmread(path)
    except (InvalidDicomError, EOFError, OSError, ValueError, struct.error) as exc:
        scan.skipped.append(f"{name}: not a readable DICOM file ({type(exc).__name__})")
        return
    if "PixelData" not in ds:
        kind = getattr(ds.get("SOPClassUID"), "name", "unknown SOP class")
        scan.skipped.append(f"{name}: no image in it ({kind})")
        return
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        scan.skipped.append(f"{name}: colour image, not an MR signal")
        return
    scan.dicom_images += 1
    derived = _derived_types(ds.get("ImageType"))
    if _is_map(derived):
        scan.derived += 1
        scan.skipped.append(f"{name}: derived {'/'.join(derived)} image (ImageType {_joined(ds.ImageType)})")
        return
    trace = "/".join(derived)  # what is left of a derived image is a trace-weighted signal
    info = _series_info(ds)
    if "PerFrameFunctionalGroupsSequence" in ds:
        _read_enhanced(ds, name, info, scan)
    elif "MOSAIC" in _upper_values(ds.get("ImageType")):
        _read_mosaic(ds, name, info, scan, trace)
    else:
        _read_classic(ds, name, info, scan, trace)


def _no_bvalue(scan: _Scan, source: str, trace: str) -> None:
    if trace:  # a trace image without a b-value is of no use, like the maps beside it
        scan.derived += 1
        scan.skipped.append(f"{source}: derived {trace} image with no b-value in any known tag")
    else:
        scan.without_bvalue += 1
        scan.skipped.append(f"{source}: no b-value in any known tag ({BVALUE_TAGS})")


def _read_classic(ds, name: str, info: _SeriesInfo, scan: _Scan, trace: str) -> None:
    diffusion = _first_item(ds.get("MRDiffusionSequence"))  # rare in classic images, but standard
    bvalue = _bvalue(ds, diffusion)
    if bvalue is None:
        _no_bvalue(scan, name, trace)
        return
    geometry = _classic_geometry(ds, name)
    slope, intercept = _rescale(ds)
    scan.images.append(_Image(
        pixels=_rescaled(_decoded(ds, name), slope, intercept), signal_step=abs(slope),
        bvalue=bvalue, isotropic=_file_isotropic(ds) or _directionality_isotropic(diffusion),
        layout="classic", series=info, source=name, stored_image=(name, 0), trace=trace, **geometry,
    ))


def _read_mosaic(ds, name: str, info: _SeriesInfo, scan: _Scan, trace: str) -> None:
    """Split a Siemens mosaic into its slices, each with its own position."""
    bvalue = _bvalue(ds, None)
    if bvalue is None:
        _no_bvalue(scan, name, trace)
        return
    tile_count = _number(_private_value(ds, 0x0019, 0x100A, "SIEMENS MR HEADER"))
    if tile_count is None:
        tile_count = _number(_csa_fields(ds).get("NumberOfImagesInMosaic"))
    if not tile_count:
        raise InputError(
            f"{name} is a Siemens mosaic without NumberOfImagesInMosaic (0019,100A); "
            "it cannot be split into slices"
        )
    slope, intercept = _rescale(ds)
    mosaic = _rescaled(_decoded(ds, name), slope, intercept)
    geometry = _classic_geometry(ds, name)
    isotropic = _file_isotropic(ds)
    for index, (tile, position) in enumerate(_mosaic_tiles(ds, mosaic, int(tile_count), geometry)):
        scan.images.append(_Image(
            pixels=tile, signal_step=abs(slope), bvalue=bvalue, isotropic=isotropic, layout="mosaic",
            series=info, source=f"{name} tile {index + 1}", stored_image=(name, 0), trace=trace,
            **dict(geometry, position=position),
        ))


def _mosaic_tiles(ds, mosaic: np.ndarray, tile_count: int, geometry: dict):
    """Yield (tile pixels, tile position) for each slice of a mosaic, in stored order."""
    per_side = math.ceil(math.sqrt(tile_count))
    rows, columns = mosaic.shape[0] // per_side, mosaic.shape[1] // per_side
    along_row, down_column = geometry["orientation"][:3], geometry["orientation"][3:]
    row_spacing, column_spacing = geometry["pixel_spacing"]
    # The header places the whole mosaic; each tile is centred where the mosaic is centred.
    first = (geometry["position"]
             + along_row * column_spacing * (mosaic.shape[1] - columns) / 2
             + down_column * row_spacing * (mosaic.shape[0] - rows) / 2)
    # Tiles are stored along Siemens' own slice normal, which may oppose row x column.
    normal = _csa_vector(ds, "SliceNormalVector")
    if normal is None:
        normal = np.cross(along_row, down_column)
    step = normal * (geometry["slice_spacing"] or 1.0)
    for index in range(tile_count):
        grid_row, grid_column = divmod(index, per_side)
        top, left = grid_row * rows, grid_column * columns
        yield mosaic[top:top + rows, left:left + columns], first + index * step


def _read_enhanced(ds, name: str, info: _SeriesInfo, scan: _Scan) -> None:
    """Read the frames of an enhanced multi-frame object (per-frame groups, shared as fallback)."""
    shared = _first_item(ds.get("SharedFunctionalGroupsSequence"))
    kept_frames = []
    for index, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        source = f"{name} frame {index + 1}"
        frame_type = _group_item(frame, shared, "MRImageFrameTypeSequence")
        # The frame's own type; without a frame type the object's ImageType speaks for it.
        frame_values = frame_type.get("FrameType") if frame_type else ds.get("ImageType")
        derived = _derived_types(frame_values)
        if _is_map(derived):
            scan.derived += 1
            scan.skipped.append(f"{source}: derived {'/'.join(derived)} frame")
            continue
        trace = "/".join(derived)
        diffusion = _group_item(frame, shared, "MRDiffusionSequence")
        bvalue = _bvalue(ds, diffusion)
        if bvalue is None:
            _no_bvalue(scan, source, trace)
            continue
        # Only the frame's own directionality: top-level private tags describe one frame at best.
        kept_frames.append((index, frame, bvalue, _directionality_isotropic(diffusion), trace))
    if not kept_frames:
        return
    pixels = _decoded(ds, name)
    if pixels.ndim == 2:  # pydicom drops the frame axis of a single frame
        pixels = pixels[np.newaxis]
    for index, frame, bvalue, isotropic, trace in kept_frames:
        source = f"{name} frame {index + 1}"
        slope, intercept = _rescale(_group_item(frame, shared, "PixelValueTransformationSequence") or ds)
        scan.images.append(_Image(
            pixels=_rescaled(pixels[index], slope, intercept), signal_step=abs(slope),
            bvalue=bvalue, isotropic=isotropic, layout="enhanced", series=info, source=source,
            stored_image=(name, index), trace=trace, **_frame_geometry(ds, frame, shared, source),
        ))


def _decoded(ds, name: str) -> np.ndarray:
    try:
        return ds.pixel_array
    except Exception as exc:  # pydicom raises several types for missing or broken decoders
        syntax = getattr(ds.file_meta.get("TransferSyntaxUID"), "name", "unknown transfer syntax")
        raise InputError(
            f"cannot decode the pixel data of {name} ({syntax}: {exc}); "
            "export the series uncompressed or install a pydicom decoder plugin"
        ) from exc


def _rescale(header) -> tuple:
    """(RescaleSlope, RescaleIntercept) of a dataset or a Pixel Value Transformation item.

    The Philips private scale (2005,100E) is deliberately not used: ADC is a ratio of signals
    scaled alike, and the standard rescale is what other readers and the scanner's ADC use.
    """
    return float(header.get("RescaleSlope", 1) or 1), float(header.get("RescaleIntercept", 0) or 0)


def _rescaled(pixels: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    values = pixels.astype(np.float32)
    if slope != 1 or intercept != 0:
        values = values * np.float32(slope) + np.float32(intercept)
    return values


# -------------------------------------------------------------------------------- geometry


def _classic_geometry(ds, name: str) -> dict:
    return _geometry(ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient"),
                     ds.get("PixelSpacing"), _slice_spacing(ds), name)


def _frame_geometry(ds, frame, shared, source: str) -> dict:
    position = _group_item(frame, shared, "PlanePositionSequence") or ds
    orientation = _group_item(frame, shared, "PlaneOrientationSequence") or ds
    measures = _group_item(frame, shared, "PixelMeasuresSequence") or ds
    return _geometry(position.get("ImagePositionPatient"), orientation.get("ImageOrientationPatient"),
                     measures.get("PixelSpacing"), _slice_spacing(measures) or _slice_spacing(ds), source)


def _geometry(position, orientation, pixel_spacing, slice_spacing, source: str) -> dict:
    if position is None or orientation is None:
        raise InputError(
            f"{source} has no ImagePositionPatient/ImageOrientationPatient, so its slice cannot be placed"
        )
    spacing = tuple(float(v) for v in pixel_spacing) if pixel_spacing else (1.0, 1.0)
    return {
        "position": np.array([float(v) for v in position], dtype=np.float64),
        "orientation": np.array([float(v) for v in orientation], dtype=np.float64),
        "pixel_spacing": spacing,
        "slice_spacing": slice_spacing,
    }


def _slice_spacing(header) -> float | None:
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = _number(header.get(keyword))
        if value:
            return abs(value)
    return None


def _slice_normal(image: _Image) -> np.ndarray:
    """Right-handed normal (row direction x column direction): slices are sorted along it."""
    normal = np.cross(image.orientation[:3], image.orientation[3:])
    return normal / np.linalg.norm(normal)


def _slice_layout(images: list, folder: Path):
    """Number the distinct slice locations along the normal: ({id(image): slice}, positions)."""
    normal = _slice_normal(images[0])
    ordered = sorted(images, key=lambda image: float(image.position @ normal))
    slice_of, positions = {}, []
    for image in ordered:
        if not positions or float((image.position - positions[-1]) @ normal) > SAME_SLICE_MM:
            positions.append(image.position)
        elif np.linalg.norm(image.position - positions[-1]) > 10 * SAME_SLICE_MM:
            raise InputError(
                f"images in {folder} at the same slice location are shifted in-plane "
                f"({image.source}); the folder seems to mix series"
            )
        slice_of[id(image)] = len(positions) - 1
    _require_even_spacing(positions, normal, folder)
    return slice_of, positions


def _require_even_spacing(positions: list, normal: np.ndarray, folder: Path) -> None:
    gaps = np.diff([float(p @ normal) for p in positions])
    if len(gaps) > 1 and gaps.max() - gaps.min() > max(SAME_SLICE_MM, 0.01 * gaps.mean()):
        raise InputError(
            f"slices in {folder} are not evenly spaced (gaps {gaps.min():.2f} to {gaps.max():.2f} mm); "
            "a slice file may be missing"
        )


def _ijk_to_ras(image: _Image, positions: list) -> np.ndarray:
    row_spacing, column_spacing = image.pixel_spacing
    if len(positions) > 1:
        slice_step = (positions[-1] - positions[0]) / (len(positions) - 1)
    else:
        slice_step = _slice_normal(image) * (image.slice_spacing or 1.0)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, 0] = image.orientation[:3] * column_spacing  # i runs along a row
    ijk_to_lps[:3, 1] = image.orientation[3:] * row_spacing  # j runs down a column
    ijk_to_lps[:3, 2] = slice_step
    ijk_to_lps[:3, 3] = positions[0]
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_lps  # DICOM LPS -> Slicer RAS


# ----------------------------------------------------------------------- selecting images


def _explain_if_nothing_usable(scan: _Scan, folder: Path) -> None:
    if scan.images:
        return
    if scan.dicom_images == 0:
        others = f" ({len(scan.skipped)} other files skipped)" if scan.skipped else ""
        raise InputError(f"no DICOM images in {folder}{others}")
    if scan.without_bvalue == 0 and scan.derived:
        raise InputError(
            f"DICOM images in {folder} are all derived maps (ADC, FA, ...); "
            "point to the folder of the original diffusion-weighted series or its trace images"
        )
    raise InputError(f"images in {folder} have no b-value in any known tag ({BVALUE_TAGS})")


def _choose_trace_or_originals(images: list, skipped: list) -> list:
    """The scanner's trace images, or the originals: never a mix at b > 0.

    Trace images are used only when no original image has b > 0 (a trace-only export); then
    original b=0 images fill in b=0 if the trace series has none. Otherwise every trace image
    is set aside and the originals are fitted.
    """
    traces = [image for image in images if image.trace]
    if not traces:
        return images
    weighted = [image for image in images if not image.trace and image.bvalue > 0]
    if weighted:
        for image in traces:
            skipped.append(
                f"{image.source}: derived {image.trace} image at b={image.bvalue:g}, set aside: "
                "the folder has the original diffusion-weighted images"
            )
        return [image for image in images if not image.trace]
    trace_bvalues = {image.bvalue for image in traces}
    kept = []
    for image in images:
        if not image.trace and image.bvalue in trace_bvalues:
            skipped.append(
                f"{image.source}: original image at b={image.bvalue:g} set aside: "
                "the scanner's trace images at that b-value are used"
            )
        else:
            kept.append(image)
    return kept


def _trace_label(images: list) -> str:
    """'TRACEW at b=2500' for the trace images among `images`; '' when there are none."""
    traces = [image for image in images if image.trace]
    if not traces:
        return ""
    kinds = "/".join(sorted({image.trace for image in traces}))
    bvalues = ", ".join(f"{b:g}" for b in sorted({image.bvalue for image in traces}))
    return f"{kinds} at b={bvalues}"


def _drop_isotropic_where_directional(images: list, skipped: list) -> list:
    """Set aside isotropic (trace) images at a b-value whose directional images are present."""
    directional = {image.bvalue for image in images if image.bvalue > 0 and not image.isotropic}
    kept = []
    for image in images:
        if image.isotropic and image.bvalue in directional:
            skipped.append(
                f"{image.source}: isotropic (trace) image at b={image.bvalue:g}, "
                "which also has directional images"
            )
        else:
            kept.append(image)
    return kept


def _require_one_series(images: list, folder: Path) -> None:
    labels = {image.series.uid: image.series.label for image in images}
    if len(labels) > 1 and not _trace_with_b0_of_its_acquisition(images):
        raise InputError(
            f"{folder} holds diffusion images of {len(labels)} series "
            f"({'; '.join(sorted(labels.values()))}); point to the folder of one series"
        )


def _trace_with_b0_of_its_acquisition(images: list) -> bool:
    """True for the one allowed pair of series: the scanner's trace series and the b=0 images
    of the original series it was computed from (scanners that put b=0 in the original series
    only, as Siemens XA does). Same acquisition means same study, frame of reference, protocol,
    echo and repetition time: a b=0 of another protocol or TE would give a wrong ADC."""
    series = {}
    for image in images:
        series.setdefault(image.series.uid, []).append(image)
    if len(series) != 2:
        return False
    trace_series = [members for members in series.values() if all(image.trace for image in members)]
    b0_series = [members for members in series.values()
                 if all(not image.trace and image.bvalue == 0 for image in members)]
    if len(trace_series) != 1 or len(b0_series) != 1:
        return False
    first, second = trace_series[0][0].series, b0_series[0][0].series
    if not first.study or first.study != second.study:
        return False
    if not first.frame_of_reference or first.frame_of_reference != second.frame_of_reference:
        return False
    for key in ("protocol", "echo_time", "repetition_time"):
        mine, theirs = getattr(first, key), getattr(second, key)
        if mine not in (None, "") and theirs not in (None, "") and mine != theirs:
            return False
    return True


def _require_same_grid(images: list, folder: Path) -> None:
    first = images[0]
    for image in images[1:]:
        if image.pixels.shape != first.pixels.shape:
            raise InputError(
                f"images in {folder} differ in size ({first.source} is {_size(first)}, "
                f"{image.source} is {_size(image)})"
            )
        if np.abs(image.orientation - first.orientation).max() > 1e-3:
            raise InputError(
                f"images in {folder} differ in orientation ({first.source} and {image.source})"
            )


def _trace_volume(images: list, slice_of: dict, slice_count: int, folder: Path) -> np.ndarray:
    """Geometric mean over directions at each slice: the trace-weighted volume of one b-value."""
    by_slice = [[] for _ in range(slice_count)]
    for image in images:
        by_slice[slice_of[id(image)]].append(image)
    counts = {len(stack) for stack in by_slice}
    if 0 in counts or len(counts) > 1:
        bvalue = images[0].bvalue
        raise InputError(
            f"images at b={bvalue:g} in {folder} do not cover every slice position the same number "
            f"of times ({min(counts)} to {max(counts)} images per slice); a file may be missing"
        )
    return np.stack([_combined(stack) for stack in by_slice]).astype(np.float32)


def _combined(stack: list) -> np.ndarray:
    """The images of one slice at one b-value as one: adc.trace_weighted's geometric mean, with
    a stored 0 read as "below one stored unit" (floored there) rather than as missing."""
    combined, _ = trace_weighted([image.pixels for image in stack], [0.0] * len(stack),  # one shell already
                                 floors=[image.signal_step for image in stack])
    return combined[0]


# ------------------------------------------------------------------------------ b-values


def _bvalue(ds, diffusion_item) -> float | None:
    """b-value in s/mm^2 from the first tag that has one; near-zero values count as 0."""
    for read in (
        lambda: diffusion_item.get("DiffusionBValue") if diffusion_item is not None else None,
        lambda: ds.get("DiffusionBValue"),
        lambda: _private_value(ds, 0x0019, 0x100C, "SIEMENS MR HEADER"),
        lambda: _csa_fields(ds).get("B_value"),
        lambda: _ge_bvalue(ds),
        lambda: _private_value(ds, 0x2001, 0x1003, "Philips Imaging DD 001"),
    ):
        value = _number(read())
        if value is not None:
            return 0.0 if value < NEAR_ZERO_BVALUE else round(value, 1)
    return None


def _ge_bvalue(ds) -> float | None:
    """GE keeps the b-value as the first value of (0043,1039), sometimes plus 10^9."""
    value = _number(_private_value(ds, 0x0043, 0x1039, "GEMS_PARM_01"))
    if value is not None and value >= 1e9:
        value -= 1e9
    return value


def _file_isotropic(ds) -> bool:
    """Whole-file flag: top-level DiffusionDirectionality or Philips (2001,1004) says isotropic."""
    philips_direction = _private_value(ds, 0x2001, 0x1004, "Philips Imaging DD 001")
    return _directionality_isotropic(ds) or _text(philips_direction).upper() == "I"


def _directionality_isotropic(header) -> bool:
    if header is None:
        return False
    return _text(header.get("DiffusionDirectionality")).upper() == "ISOTROPIC"



# ------------------------------------------------------------------ headers and private tags


def _private_value(ds, group: int, element: int, creator: str):
    """Value of a private element, found through its creator; anonymised files may lack the creator."""
    first_creator, last_creator = (group << 16) | 0x10, (group << 16) | 0xFF
    creators = [tag for tag in ds.keys() if first_creator <= tag <= last_creator]
    for tag in creators:
        if _text(ds[tag].value).upper() == creator.upper():
            block = tag & 0xFF
            found = ds.get((group, (block << 8) | (element & 0xFF)))
            return None if found is None else found.value
    if not creators:  # anonymised without creators: trust the vendor's usual address
        found = ds.get((group, element))
        return None if found is None else found.value
    return None


def _csa_fields(ds) -> dict:
    """Fields of the Siemens CSA image header (0029,1010), name -> list of strings.

    Only the 'SV10' (CSA2) layout is read; older CSA1 headers give an empty dict.
    """
    raw = _private_value(ds, 0x0029, 0x1010, "SIEMENS CSA HEADER")
    if not isinstance(raw, bytes) or not raw.startswith(b"SV10"):
        return {}
    fields = {}
    try:
        tag_count = struct.unpack_from("<I", raw, 8)[0]
        offset = 16
        for _ in range(min(tag_count, 1000)):
            name = raw[offset:offset + 64].split(b"\0", 1)[0].decode("latin-1")
            item_count = struct.unpack_from("<i", raw, offset + 76)[0]
            offset += 84
            values = []
            for _ in range(min(max(item_count, 0), 1000)):
                length = struct.unpack_from("<i", raw, offset + 4)[0]
                offset += 16
                text = raw[offset:offset + length].split(b"\0", 1)[0].decode("latin-1").strip()
                if text:
                    values.append(text)
                offset += (length + 3) // 4 * 4
            fields[name] = values
    except struct.error:  # truncated header: keep what was read
        pass
    return fields


def _csa_vector(ds, name: str) -> np.ndarray | None:
    values = _csa_fields(ds).get(name) or []
    if len(values) != 3:
        return None
    vector = np.array([float(v) for v in values])
    norm = np.linalg.norm(vector)
    return vector / norm if norm > 0 else None


def _series_info(ds) -> _SeriesInfo:
    description = _text(ds.get("SeriesDescription"))
    number = _text(ds.get("SeriesNumber"))
    return _SeriesInfo(
        uid=_text(ds.get("SeriesInstanceUID")),
        label=" ".join(part for part in (number, f"'{description}'" if description else "") if part),
        vendor=_vendor(_text(ds.get("Manufacturer"))),
        model=_text(ds.get("ManufacturerModelName")),
        software=_joined(ds.get("SoftwareVersions")),
        study=_text(ds.get("StudyInstanceUID")),
        frame_of_reference=_text(ds.get("FrameOfReferenceUID")),
        protocol=_text(ds.get("ProtocolName")),
        echo_time=_number(ds.get("EchoTime")),
        repetition_time=_number(ds.get("RepetitionTime")),
    )


def _describe(images: list) -> str:
    info = images[0].series
    scanner = " ".join(part for part in (info.vendor, info.model) if part)
    stored = len({image.stored_image for image in images})
    layout = images[0].layout
    if layout == "enhanced":
        files = len({image.stored_image[0] for image in images})
        layout = f"enhanced multi-frame, {stored} frames in {files} file{'s' if files > 1 else ''}"
    elif layout == "mosaic":
        layout = f"mosaic, {stored} images of {len(images) // stored} slices"
    else:
        layout = f"classic, {stored} images"
    described = ", ".join(part for part in (scanner, info.software, layout) if part)
    trace = _trace_label(images)
    if trace:
        b0 = " and original b=0 images" if any(not image.trace for image in images) else ""
        described += f"; scanner trace images used ({trace}{b0}): the folder has no directional images"
    return described


def _vendor(manufacturer: str) -> str:
    key = manufacturer.lower().replace("_", " ").split(" ")[0] if manufacturer else ""
    return VENDOR_NAMES.get(key, manufacturer)


def _is_map(derived: list) -> bool:
    """A derived image that is a computed map (ADC, FA, a computed b-value, ...), not a trace."""
    return any(value not in TRACE_TYPES for value in derived)


def _derived_types(image_type) -> list:
    """The values of an ImageType/FrameType that say the scanner computed this image."""
    values = _upper_values(image_type)
    flagged_derived = bool(values) and values[0] == "DERIVED"
    return [value for value in values
            if value in DERIVED_IMAGE_TYPES or value.startswith("ADC_")
            or (flagged_derived and value in DERIVED_DIFFUSION_TYPES)]


def _upper_values(value) -> list:
    """A DICOM code string's values in upper case, a multi-value or a backslash-joined string alike."""
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip().upper() for part in value.split("\\") if part.strip()]
    return [str(part).strip().upper() for part in value if str(part).strip()]


def _group_item(frame, shared, keyword: str):
    """First item of a functional-group sequence: the frame's own, else the shared one."""
    for group in (frame, shared):
        item = _first_item(group.get(keyword)) if group is not None else None
        if item is not None:
            return item
    return None


def _first_item(sequence):
    return sequence[0] if sequence else None


def _number(value) -> float | None:
    """First number in a DICOM value (number, multi-value, string, or raw bytes of an unknown VR)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return _number_from_bytes(value)
    if isinstance(value, str):
        value = value.split("\\")[0]
    elif not isinstance(value, (int, float)):
        try:
            value = list(value)[0]
        except (TypeError, IndexError):
            return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _number_from_bytes(raw: bytes) -> float | None:
    text = raw.decode("latin-1").strip("\0 ")
    try:
        return float(text.split("\\")[0])
    except ValueError:
        pass
    if len(raw) == 4:  # binary FL read without its private dictionary
        return struct.unpack("<f", raw)[0]
    if len(raw) == 8:
        return struct.unpack("<d", raw)[0]
    return None


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return str(value).strip("\0 ")


def _joined(value) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    return "\\".join(str(v).strip() for v in value)


def _size(image: _Image) -> str:
    rows, columns = image.pixels.shape
    return f"{columns}x{rows}"
