"""A faithful stand-in for the Slicer application, to run a scripted module's real widget and
self-test in the test suite.

Three layers, each in its own module:

- pythonqt.py: PySide6 under PythonQt's rules (`import qt`);
- widgets.py: the CTK and qMRML widgets as their C++ sources behave (`import ctk`, `slicer.qMRML*`);
- application.py: slicer.app, slicer.modules and the module life cycle, on slicer-core's MRML;
- dicom_database.py: slicer.dicomDatabase (an empty one in each new application's temporary folder).

Slicer's own Python layer (ScriptedLoadableModule, parameterNodeWrapper, i18n, testing) is read
in place from a Slicer source tree (`SLICER_SOURCE`, default ../shared/slicer-source beside the
repository): its Base/Python/slicer folder goes on `slicer.__path__` after slicer-core's own
package, as the rig must never carry a copy of it. `slicer_source()` is None when it is absent,
and the tests skip saying so.

Exceptions raised in slots (PythonQt prints them) and in VTK observers (VTK prints them through
sys.excepthook) are recorded in `Rig.errors`; VTK's error and warning output is collected in
`Rig.vtk_messages()`.
"""

from __future__ import annotations

import os
import shutil
import sys
import traceback
import types
from pathlib import Path

import vtk

from . import pythonqt

ROOT = Path(__file__).resolve().parents[2]


def slicer_source():
    """Slicer's source tree (the parts a headless test needs), or None when it is absent."""
    path = Path(os.environ.get("SLICER_SOURCE", ROOT.parent / "shared" / "slicer-source"))
    if (path / "Base" / "Python" / "slicer" / "parameterNodeWrapper" / "wrapper.py").is_file():
        return path
    return None


class Rig:
    """The installed stand-ins; one per test session (Slicer's Python layer imports once)."""

    def __init__(self, source: Path):
        from PySide6 import QtCore, QtWidgets

        self.source = Path(source)
        self.qapp = QtWidgets.QApplication.instance() or QtWidgets.QApplication(["rig"])
        QtCore.QCoreApplication.setOrganizationName("VertebralMarrowRig")
        QtCore.QSettings.setDefaultFormat(QtCore.QSettings.IniFormat)
        self._settings_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"vm-rig-settings-{os.getpid()}"
        QtCore.QSettings.setPath(QtCore.QSettings.IniFormat, QtCore.QSettings.UserScope, str(self._settings_dir))

        sys.modules["qt"] = pythonqt.qt_module()
        from . import widgets

        ctk = types.ModuleType("ctk", "CTK's widgets (stand-ins, slicer_rig.widgets)")
        for cls in widgets.CTK:
            setattr(ctk, cls.__name__, cls)
        ctk.ctkWidgetsUtils = types.SimpleNamespace()
        sys.modules["ctk"] = ctk

        import slicer

        layer = str(self.source / "Base" / "Python" / "slicer")
        if layer not in slicer.__path__:
            slicer.__path__.append(layer)
        if "slicer.modules" not in sys.modules:
            sys.modules["slicer.modules"] = slicer.modules = types.ModuleType("slicer.modules")
        for cls in widgets.QMRML:
            setattr(slicer, cls.__name__, cls)
        from .application import qSlicerScriptedLoadableModuleWidget

        slicer.qSlicerScriptedLoadableModuleWidget = qSlicerScriptedLoadableModuleWidget
        self.slicer = slicer
        self.errors = pythonqt.ERRORS
        self._output = vtk.vtkStringOutputWindow()
        vtk.vtkOutputWindow.SetInstance(self._output)
        sys.excepthook = self._excepthook
        self.new_application()

    def _excepthook(self, kind, value, tb):
        pythonqt.record_error("a VTK observer or Qt callback", "".join(traceback.format_exception(kind, value, tb)))

    def new_application(self, translations=None, headless=None):
        """A fresh scene (or `headless`, a VertebralMarrowLib.mrml.HeadlessApp) and slicer.app
        (Slicer's own start-up), no module loaded."""
        from VertebralMarrowLib.mrml import new_scene

        from .application import Application

        if getattr(self, "app", None) is not None:  # the previous application's temporary folder goes with it
            shutil.rmtree(self.app.temporaryPath, ignore_errors=True)
        headless = headless or new_scene()
        self.scene = headless.scene
        self.app = Application(headless.scene, headless.app_logic, headless.segmentations_logic, translations)
        self.slicer.mrmlScene = headless.scene
        self.slicer.app = self.app
        self.slicer.modules.segmentations = types.SimpleNamespace(logic=lambda: headless.segmentations_logic)
        from .dicom_database import DicomDatabase

        self.slicer.dicomDatabase = DicomDatabase(Path(self.app.temporaryPath) / "DICOM database")
        del self.errors[:]
        self.vtk_reset()
        return self.app

    def vtk_reset(self):
        self._output = vtk.vtkStringOutputWindow()
        vtk.vtkOutputWindow.SetInstance(self._output)

    def vtk_messages(self) -> str:
        """VTK's error and warning text since the last vtk_reset()."""
        return self._output.GetOutput()

    def load_module(self, module_py: Path):
        from .application import load_module

        return load_module(module_py, self.app)

    def show(self, python_module, parent):
        from .application import show_module

        return show_module(python_module, parent)

    def hide(self, parent):
        from .application import hide_module

        hide_module(parent)


_RIG = None


def install(source: Path) -> Rig:
    """The rig (installed once per process)."""
    global _RIG
    if _RIG is None:
        _RIG = Rig(source)
    return _RIG
