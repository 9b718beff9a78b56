"""A fitted map written to a file without MRML (numpy and SimpleITK only), its unit in the file:
NRRD's `content` field, NIfTI's description. NRRD is written here straight from the array
(no copy; gzip streamed chunk by chunk when asked); other formats go through SimpleITK."""

from __future__ import annotations

import os
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
    data = np.ascontiguousarray(array, "<f4")
    with open(path, "wb") as handle:
        handle.write(_nrrd_header(data.shape, ijk_to_ras, content, compress))
        flat = memoryview(data.reshape(-1)).cast("B")
        if not compress:
            handle.write(flat)
            return
        packer = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: a gzip stream, as NRRD's gzip encoding
        for start in range(0, len(flat), _CHUNK_BYTES):
            handle.write(packer.compress(flat[start:start + _CHUNK_BYTES]))
        handle.write(packer.flush())


def _nrrd_header(shape_kji, ijk_to_ras: np.ndarray, content: str, compress: bool) -> bytes:
    """The header of a float32 NRRD on the grid `ijk_to_ras` (NRRD's space is LPS)."""
    ijk_to_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_ras
    vectors = " ".join("(" + ",".join(f"{v:.17g}" for v in ijk_to_lps[:3, axis]) + ")" for axis in range(3))
    origin = "(" + ",".join(f"{v:.17g}" for v in ijk_to_lps[:3, 3]) + ")"
    return (
        "NRRD0004\n"
        "# Complete NRRD file format specification at: http://teem.sourceforge.net/nrrd/format.html\n"
        "type: float\ndimension: 3\nspace: left-posterior-superior\n"
        f"sizes: {' '.join(str(n) for n in tuple(shape_kji)[::-1])}\n"
        f"space directions: {vectors}\nkinds: domain domain domain\nendian: little\n"
        f"encoding: {'gzip' if compress else 'raw'}\nspace origin: {origin}\n"
        f"content: {content}\n\n"
    ).encode("ascii")


def streams(path, compress: bool = False) -> bool:
    """Whether a map file can be written as it is computed (MapStream): raw NRRD in one file,
    where the system writes at an offset from several threads (pwrite; not Windows)."""
    return str(path).lower().endswith(".nrrd") and not compress and hasattr(os, "pwrite")


class MapStream:
    """A raw NRRD map written while it is computed: the header first, then each chunk of voxels
    at its own place (pwrite, from whichever thread fitted it), so the whole map never has to be
    in memory. `any_finite` tells whether any voxel written was finite."""

    def __init__(self, path, shape_kji, ijk_to_ras: np.ndarray, content: str = ADC_UNIT_TEXT, shown_as=None):
        header = _nrrd_header(shape_kji, ijk_to_ras, content, compress=False)
        self.path = Path(path)
        self.shown_as = shown_as or self.path  # the name errors give (the target of a temporary file)
        self.data_start = len(header)
        self.any_finite = False
        try:
            self.file = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        except OSError as exc:
            raise self._error(exc) from None
        try:
            self._write_at(header, 0)
            os.ftruncate(self.file, self.data_start + 4 * int(np.prod(shape_kji, dtype=np.int64)))
        except OSError as exc:
            os.close(self.file)
            raise self._error(exc) from None
        except InputError:
            os.close(self.file)
            raise

    def write(self, first_voxel: int, values: np.ndarray) -> None:
        data = np.ascontiguousarray(values, "<f4")
        self._write_at(memoryview(data.reshape(-1)).cast("B"), self.data_start + 4 * first_voxel)
        if not self.any_finite and np.isfinite(data).any():
            self.any_finite = True

    def _write_at(self, data, position: int) -> None:
        data = memoryview(data)
        while len(data):
            try:
                written = os.pwrite(self.file, data, position)
            except OSError as exc:  # a full disk, a quota
                raise self._error(exc) from None
            data, position = data[written:], position + written

    def _error(self, exc: OSError) -> InputError:
        return InputError(f"cannot write {self.shown_as}: {exc.strerror or exc}")

    def close(self) -> None:
        os.close(self.file)

    def __enter__(self) -> "MapStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
