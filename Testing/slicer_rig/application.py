"""What the Slicer application gives a scripted module at run time, on slicer-core's MRML.

- `slicer.app` (qSlicerApplication): the MRML scene, the application logic with the
  segmentations logic registered, the module manager, a layout manager with the Red, Yellow and
  Green slice views (their slice and slice-composite nodes in the scene, as Slicer's layout
  manager makes them), translations (`translate(context, text)`), testing mode on (so
  slicer.util.tryWithErrorDisplay raises instead of showing a dialog, as under Slicer's
  test runner), a main window with a status bar and a temporary folder of its own
  (`temporaryPath`).
- `slicer.modules`: one entry per loaded module (`.path`, `.widgetRepresentation()`,
  `.logic()`), and `<Module>Instance` / `<Module>Widget` as qSlicerScriptedLoadableModule sets
  them.
- the module's life cycle as qSlicerScriptedLoadableModule(Widget) drives it: the module class
  built with a parent carrying title, categories, ...; on first show the widget built with a
  qSlicerScriptedLoadableModuleWidget as parent, setup(), then enter(); exit() when another
  module is shown; cleanup() on unload.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import types
from pathlib import Path

import slicer
from PySide6 import QtCore, QtGui, QtWidgets
from PySide6.QtCore import Property, Signal

from .pythonqt import PythonQtObject, pythonqt_class


class _UrlRecorder(QtCore.QObject):
    def __init__(self, urls):
        super().__init__()
        self._urls = urls

    @QtCore.Slot(QtCore.QUrl)
    def open(self, url):
        self._urls.append(url.toLocalFile() or url.toString())


class qSlicerModuleManager(PythonQtObject, QtCore.QObject):
    CPP_SIGNALS = frozenset({"moduleAboutToBeUnloaded(QString)"})
    moduleAboutToBeUnloaded = Signal(str)

    def __init__(self, modules):
        super().__init__()
        self._modules = modules

    def module(self, name):
        return self._modules.get(name)


class qSlicerScriptedLoadableModuleWidget(PythonQtObject, QtWidgets.QWidget):
    """The module panel Slicer makes; its `self()` is the Python widget object."""

    def _entered(self):
        return self.__dict__.get("_entered", False)

    isEntered = Property(bool, _entered)

    def __init__(self):
        super().__init__()
        self.setLayout(pythonqt_class(QtWidgets.QVBoxLayout)())
        self._python = None

    def self(self):
        return self._python


class ModuleParent:
    """The `parent` a ScriptedLoadableModule gets (qSlicerScriptedLoadableModule's attributes)."""

    def __init__(self, name, path):
        self.name, self.path = name, str(path)
        self.title, self.categories, self.dependencies, self.contributors = "", [], [], []
        self.helpText = self.acknowledgementText = ""
        self.icon = None
        self.hidden = False
        self._widget = None
        self.instance = None

    def widgetRepresentation(self):
        return self._widget

    def logic(self):
        return None


class LayoutManager:
    """Red, Yellow and Green slice views: a slice node and a slice-composite node each, in the scene."""

    VIEWS = ("Red", "Yellow", "Green")

    def __init__(self, scene, app_logic):
        self._scene, self._app_logic = scene, app_logic
        self._logics = {}
        self.create_views()

    def create_views(self):
        for name, orientation in zip(self.VIEWS, ("Axial", "Sagittal", "Coronal")):
            if self._scene.GetSingletonNode(name, "vtkMRMLSliceNode") is not None:
                continue
            logic = slicer.vtkMRMLSliceLogic()
            logic.SetMRMLApplicationLogic(self._app_logic)
            logic.SetMRMLScene(self._scene)
            node = logic.AddSliceNode(name)
            node.SetOrientation(orientation)
            self._logics[name] = logic

    def sliceViewNames(self):
        return list(self.VIEWS)

    def sliceWidget(self, name):
        logic = self._logics[name]
        return types.SimpleNamespace(mrmlSliceNode=logic.GetSliceNode, mrmlSliceCompositeNode=logic.GetSliceCompositeNode,
                                     sliceLogic=lambda: logic)

    def mrmlSliceLogics(self):
        collection = slicer.vtkCollection() if hasattr(slicer, "vtkCollection") else __import__("vtk").vtkCollection()
        for name in self.VIEWS:
            collection.AddItem(self._logics[name])
        return collection


class Application:
    """slicer.app for the rig."""

    applicationName = "Slicer"  # QCoreApplication::applicationName, in the titles of Slicer's message boxes

    def __init__(self, scene, app_logic, segmentations_logic, translations=None):
        self._scene, self._app_logic = scene, app_logic
        self.temporaryPath = tempfile.mkdtemp(prefix="vm-rig-slicer-temp-")
        self.modules = {}
        self._module_manager = qSlicerModuleManager(self.modules)
        self._layout = LayoutManager(scene, app_logic)
        self.translations = dict(translations or {})
        self.translated = []  # (context, text) asked for
        self.processed_events = 0
        self._window = pythonqt_class(QtWidgets.QMainWindow)()
        self._window.setObjectName("qSlicerMainWindow")
        self.segmentations_logic = segmentations_logic
        # URLs the module asks the desktop to open (QDesktopServices.openUrl), recorded, not opened
        self.opened_urls = []
        self._url_handler = _UrlRecorder(self.opened_urls)
        QtGui.QDesktopServices.setUrlHandler("file", self._url_handler, "open")

    def mrmlScene(self):
        return self._scene

    def applicationLogic(self):
        return self._app_logic

    def moduleManager(self):
        return self._module_manager

    def layoutManager(self):
        return self._layout

    def translate(self, context, text):
        self.translated.append((context, text))
        return self.translations.get((context, text), text)

    def processEvents(self, *args):
        self.processed_events += 1
        QtWidgets.QApplication.processEvents()

    def testingEnabled(self):
        return True

    def setOverrideCursor(self, cursor):
        pass

    def restoreOverrideCursor(self):
        pass

    def mainWindow(self):
        return self._window

    def topLevelWidgets(self):
        return [self._window]

    def openUrl(self, url):
        self.opened_urls.append(url)


def load_module(module_py: Path, app: Application):
    """Import the module file as Slicer's scripted-module loader does (module name = file
    stem, its folder on sys.path) and build the module object."""
    module_py = Path(module_py)
    name = module_py.stem
    folder = str(module_py.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(name, module_py)
    python_module = importlib.util.module_from_spec(spec)
    sys.modules[name] = python_module
    spec.loader.exec_module(python_module)
    parent = ModuleParent(name, module_py)
    parent.instance = getattr(python_module, name)(parent)
    app.modules[name] = parent
    setattr(slicer.modules, name.lower(), parent)
    setattr(slicer.modules, name + "Instance", parent.instance)
    return python_module, parent


def show_module(python_module, parent: ModuleParent):
    """Show the module: build its widget on first show (setup), then enter()."""
    if parent._widget is None:
        panel = qSlicerScriptedLoadableModuleWidget()
        widget = getattr(python_module, parent.name + "Widget")(panel)
        panel._python = widget
        parent._widget = panel
        widget.setup()
        setattr(slicer.modules, parent.name + "Widget", widget)
    panel = parent._widget
    panel.__dict__["_entered"] = True
    panel.self().enter()
    return panel.self()


def hide_module(parent: ModuleParent):
    panel = parent._widget
    if panel is not None and panel.__dict__.get("_entered"):
        panel.__dict__["_entered"] = False
        panel.self().exit()
