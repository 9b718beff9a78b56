"""Slicer's DICOM database (slicer.dicomDatabase, CTK's ctkDICOMDatabase) as far as a scripted
module uses it, on real files: an index from SOP instance UID to file, built by reading each
file's header with pydicom.

- fileForInstance(uid): the file of an instance, "" when the database has none;
- instanceForFile(path): the SOP instance UID of an indexed file, "" otherwise;
- insert(filePath, storeFile=True, ...): index one file; with storeFile (CTK's default) the file
  is copied into the database folder as dicom/<study UID>/<series UID>/<instance UID>, the
  layout ctkDICOMDatabase stores files in, and the copy is what fileForInstance gives;
- databaseDirectory: the database folder.

`import_folder(folder)` indexes every DICOM file below a folder in place, as the DICOM module's
"Import" does without copying (DICOMUtils.importDicom(folder) with copyFiles=False).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError


class DicomDatabase:
    def __init__(self, directory):
        self.databaseDirectory = str(directory)
        Path(directory).mkdir(parents=True, exist_ok=True)
        self._files = {}

    def fileForInstance(self, uid):
        return self._files.get(str(uid), "")

    def instanceForFile(self, path):
        wanted = str(path)
        return next((uid for uid, file in self._files.items() if file == wanted), "")

    def insert(self, filePath, storeFile=True, generateThumbnail=True, createHierarchy=True,
               destinationDirectoryName=""):
        header = pydicom.dcmread(filePath, stop_before_pixels=True)
        path = Path(filePath)
        if storeFile:
            target = (Path(self.databaseDirectory) / "dicom" / header.StudyInstanceUID / header.SeriesInstanceUID
                      / header.SOPInstanceUID)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            path = target
        self._files[str(header.SOPInstanceUID)] = str(path)

    def import_folder(self, folder):
        for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            try:
                self.insert(path, storeFile=False)
            except (InvalidDicomError, AttributeError):
                continue  # not DICOM, or no SOP instance
