"""A fitted map written to a file without MRML (numpy and SimpleITK only), its unit in the file:
NRRD's `content` field, NIfTI's description. NRRD is written here straight from the array
(no copy; gzip streamed chunk by chunk when asked); other formats go through SimpleITK."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from ..errors import InputError

ADC_UNIT_TEXT = "ADC 10^-3 mm^2/s"
MAP_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
_CHUNK_BYTES = 1 << 22


def check_map_path(path) -> None:
    """Refuse, before any work, an output file of a format the map cannot be written in."""
    if not str(path).lower().endswith(MAP_SUFFIXES):
        raise InputError(f"--out {path}: write the ADC map as one of {', '.join(MAP_SUFFIXES)}")


def write_map(path, array_kji: np.ndarray, ijk_to_ras: np.ndarray, content: str = ADC_UNIT_TEXT,
              compress: bool = False) -> Path:
    """Write a float32 (k, j, i) map on the grid `ijk_to_ras`; uncompressed unless asked."""
    path = Path(path)
    check_map_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.lower().endswith(".nrrd"):
        _write_nrrd(path, array_kji, ijk_to_ras, content, compress)
    else:
        _write_sitk(path, array_kji, ijk_to_ras, content, compress)
    return path


def _write_nrrd(path: Path, array: np.ndarray, ijk_to_ras: np.ndarray, content: str, compress: bool) -> None:
    ijk_to_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_ras
    vectors = " ".join("(" + ",".join(f"{v:.17g}" for v in ijk_to_lps[:3, axis]) + ")" for axis in range(3))
    origin = "(" + ",".join(f"{v:.17g}" for v in ijk_to_lps[:3, 3]) + ")"
    data = np.ascontiguousarray(array, "<f4")
    header = (
        "NRRD0004\n"
        "# Complete NRRD file format specification at: http://teem.sourceforge.net/nrrd/format.html\n"
        "type: float\ndimension: 3\nspace: left-posterior-superior\n"
        f"sizes: {' '.join(str(n) for n in data.shape[::-1])}\n"
        f"space directions: {vectors}\nkinds: domain domain domain\nendian: little\n"
        f"encoding: {'gzip' if compress else 'raw'}\nspace origin: {origin}\n"
        f"content: {content}\n\n"
    )
    with open(path, "wb") as handle:
        handle.write(header.encode("ascii"))
        flat = memoryview(data.reshape(-1)).cast("B")
        if not compress:
            handle.write(flat)
            return
        packer = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: a gzip stream, as NRRD's gzip encoding
        for start in range(0, len(flat), _CHUNK_BYTES):
            handle.write(packer.compress(flat[start:start + _CHUNK_BYTES]))
        handle.write(packer.flush())


def _write_sitk(path: Path, array: np.ndarray, ijk_to_ras: np.ndarray, content: str, compress: bool) -> None:
    from ..inputs.dwi_files import simpleitk

    sitk = simpleitk()
    image = sitk.GetImageFromArray(np.asarray(array, np.float32))
    ijk_to_lps = np.diag([-1.0, -1.0, 1.0]) @ ijk_to_ras[:3, :3]
    spacing = np.linalg.norm(ijk_to_lps, axis=0)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in (ijk_to_lps / spacing).ravel()])
    image.SetOrigin([float(v) for v in np.diag([-1.0, -1.0, 1.0]) @ ijk_to_ras[:3, 3]])
    image.SetMetaData("ITK_FileNotes", content)  # NIfTI's descrip
    try:
        sitk.WriteImage(image, str(path), compress)
    except RuntimeError as exc:
        raise InputError(f"cannot write {path}: {str(exc).strip().splitlines()[-1]}") from None
