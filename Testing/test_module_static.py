"""The Slicer module checked without Slicer: its .ui, its parameter node, its Python 3.9
syntax, its CMake listing, the panel's library functions on real MRML, and its Logic run on
a headless scene.

Slicer itself (PythonQt, CTK, the Slicer application) is not on this machine. What stands in
(the widget itself runs under the rig of Testing/slicer_rig: test_widget_rig.py):

- Qt: PySide6 (QT_QPA_PLATFORM=offscreen). QUiLoader loads the .ui with placeholder classes
  for Slicer's and CTK's custom widgets; each placeholder declares exactly the Qt properties,
  signals, slots and invokable methods of the real class, read off its header
  (Libs/MRML/Widgets/qMRML*.h in Slicer, Libs/Widgets/ctk*.h in CTK). So a misspelt property,
  a wrong signal or slot in the .ui or in `connect("signal(args)")`, or a method PythonQt would
  not expose (not a slot, not Q_INVOKABLE) fails here as it would in Slicer.
- the parameter node wrapper: its GUI-connector rules (which widget class may carry which
  parameter type; Slicer's Base/Python/slicer/parameterNodeWrapper/guiConnectors.py) are
  restated below and checked against the .ui and the class's annotations.
- the Logic: VertebralMarrow.py is loaded under the rig (Slicer's own ScriptedLoadableModule
  and parameterNodeWrapper read from ../shared/slicer-source; skipped when it is absent) and
  its Logic runs on a headless MRML scene from slicer-core, the same classes Slicer uses.
"""

from __future__ import annotations

import ast
import dataclasses
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest

import slicer
import slicer.util
import vtk

from VertebralMarrowLib import DISCLAIMER
from VertebralMarrowLib.core.criteria import SETTING
from VertebralMarrowLib.outputs import nodes as outputs
from VertebralMarrowLib.slicer_panel import panel
from VertebralMarrowLib.analysis import analyze
from VertebralMarrowLib.core.criteria import ENTITY_KEYS, Options, load_criteria
from VertebralMarrowLib.errors import InputError
from VertebralMarrowLib.mrml import (
    array_of,
    get_segment_role,
    ijk_to_ras_of,
    load_segmentation,
    new_scene,
    segment_ids,
    volume_from_array,
    write_node,
)

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "VertebralMarrow"
MODULE_PY = MODULE_DIR / "VertebralMarrow.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "VertebralMarrow.ui"
LIB_DIR = MODULE_DIR / "VertebralMarrowLib"
MODULE_CMAKE = MODULE_DIR / "CMakeLists.txt"
CUTOFF_TOOLTIP = (
    "ADC cut-off 1.21 x 10^-3 mm^2/s between malignant and benign (Kaur A et al. Pol J Radiol 2020; 85: e215-e223)"
)

# =============================================================================================
# Qt: PySide6 with placeholders for Slicer's and CTK's widgets
# =============================================================================================

from PySide6.QtCore import Property, QFile, QIODevice, QMetaObject, Signal, Slot, qInstallMessageHandler  # noqa: E402
from PySide6 import QtCore, QtGui, QtWidgets  # noqa: E402
from PySide6.QtUiTools import QUiLoader  # noqa: E402


def _placeholder(name: str, base, properties: dict, signals: dict, slots: dict, invokables=(), extra=None):
    """A PySide6 class named like a Slicer/CTK widget with the given Qt API.

    properties: name -> Qt type name; signals: name -> list of argument-type lists (overloads);
    slots: name -> list of argument-type lists; invokables: plain methods (Q_INVOKABLE).
    """
    namespace = {}
    for prop_name, qt_type in properties.items():
        def getter(self, _n=prop_name):
            return self.__dict__.get("_prop_" + _n)

        def setter(self, value, _n=prop_name):
            self.__dict__["_prop_" + _n] = value

        namespace[prop_name] = Property(qt_type, getter, setter)
    for signal_name, overloads in signals.items():
        namespace[signal_name] = Signal(*[tuple(o) for o in overloads]) if len(overloads) > 1 else Signal(*overloads[0])
    for slot_name, overloads in slots.items():
        def slot(self, *args):
            return None

        for arguments in overloads:
            slot = Slot(*arguments, name=slot_name)(slot)
        namespace[slot_name] = slot
    for method in invokables:
        namespace[method] = lambda self, *args: None
    namespace.update(extra or {})
    return type(name, (base,), namespace)


# qMRMLWidget.h
qMRMLWidget = _placeholder(
    "qMRMLWidget", QtWidgets.QWidget, {},
    {"mrmlSceneChanged": [["vtkMRMLScene*"]]},
    {"setMRMLScene": [["vtkMRMLScene*"]]},
    ["mrmlScene"],
)
# qMRMLNodeComboBox.h
qMRMLNodeComboBox = _placeholder(
    "qMRMLNodeComboBox", QtWidgets.QWidget,
    {"currentNodeID": "QString", "currentNodeId": "QString", "nodeTypes": "QStringList", "showHidden": bool,
     "showChildNodeTypes": bool, "hideChildNodeTypes": "QStringList", "baseName": "QString", "noneEnabled": bool,
     "addEnabled": bool, "removeEnabled": bool, "editEnabled": bool, "renameEnabled": bool,
     "interactionNodeSingletonTag": "QString", "selectNodeUponCreation": bool, "noneDisplay": "QString",
     "sizeAdjustPolicy": int},
    {"currentNodeChanged": [["vtkMRMLNode*"], [bool]], "currentNodeIDChanged": [["QString"]],
     "nodeActivated": [["vtkMRMLNode*"]], "nodeAdded": [["vtkMRMLNode*"]], "nodeAddedByUser": [["vtkMRMLNode*"]],
     "nodeAddedByUserAction": [["vtkMRMLNode*"]], "nodeAboutToBeRemoved": [["vtkMRMLNode*"]],
     "currentNodeRenamed": [["QString"]], "nodeAboutToBeEdited": [["vtkMRMLNode*"]]},
    {"setMRMLScene": [["vtkMRMLScene*"]], "setCurrentNode": [["vtkMRMLNode*"], ["QString"]],
     "setCurrentNodeID": [["QString"]], "setCurrentNodeIndex": [[int]], "removeCurrentNode": [[]],
     "editCurrentNode": [[]], "renameCurrentNode": [[]], "setNoneEnabled": [[bool]], "setAddEnabled": [[bool]],
     "setRemoveEnabled": [[bool]], "setEditEnabled": [[bool]], "setRenameEnabled": [[bool]],
     "setInteractionNodeSingletonTag": [["QString"]], "setSelectNodeUponCreation": [[bool]],
     "setNoneDisplay": [["QString"]]},
    ["mrmlScene", "addAttribute", "removeAttribute", "setNodeTypeLabel", "nodeTypeLabel", "nodeCount",
     "nodeFromIndex", "currentNode", "currentNodeId", "sortFilterProxyModel", "addMenuAction"],
)
# qMRMLCheckableNodeComboBox.h
qMRMLCheckableNodeComboBox = _placeholder(
    "qMRMLCheckableNodeComboBox", qMRMLNodeComboBox, {},
    {"checkedNodesChanged": [[]]},
    {"check": [["vtkMRMLNode*"]], "uncheck": [["vtkMRMLNode*"]]},
    ["checkedNodes", "uncheckedNodes", "allChecked", "noneChecked", "checkState", "setCheckState", "setUserCheckable"],
)
# qMRMLTableView.h
qMRMLTableView = _placeholder(
    "qMRMLTableView", QtWidgets.QTableView,
    {"transposed": bool, "firstRowLocked": bool, "firstColumnLocked": bool},
    {"mrmlSceneChanged": [["vtkMRMLScene*"]], "selectionChanged": [[]]},
    {"setMRMLScene": [["vtkMRMLScene*"]], "setMRMLTableViewNode": [["vtkMRMLTableViewNode*"]],
     "setMRMLTableNode": [["vtkMRMLTableNode*"], ["vtkMRMLNode*"]], "setTransposed": [[bool]],
     "setFirstRowLocked": [[bool]], "setFirstColumnLocked": [[bool]], "copySelection": [[]],
     "pasteSelection": [[]], "plotSelection": [[]], "insertRow": [[]], "insertColumn": [[]],
     "deleteRow": [[]], "deleteColumn": [[]]},
    ["mrmlScene", "mrmlTableViewNode", "mrmlTableNode", "tableModel", "sortFilterProxyModel"],
)
# ctkCollapsibleButton.h (a QAbstractButton)
ctkCollapsibleButton = _placeholder(
    "ctkCollapsibleButton", QtWidgets.QAbstractButton,
    {"collapsed": bool, "collapsedHeight": int, "contentsFrameShape": int, "contentsFrameShadow": int,
     "contentsLineWidth": int, "contentsMidLineWidth": int, "buttonTextAlignment": int, "indicatorAlignment": int},
    {"contentsCollapsed": [[bool]]}, {}, [],
    extra={"paintEvent": lambda self, event: None},
)
# ctkSliderWidget.h
ctkSliderWidget = _placeholder(
    "ctkSliderWidget", QtWidgets.QWidget,
    {"decimals": int, "singleStep": float, "pageStep": float, "minimum": float, "maximum": float, "value": float,
     "prefix": "QString", "suffix": "QString", "tickInterval": float, "tickPosition": int, "autoSpinBoxWidth": bool,
     "spinBoxAlignment": int, "tracking": bool, "spinBoxVisible": bool, "popupSlider": bool},
    {"valueChanged": [[float]], "valueIsChanging": [[float]]},
    {"reset": [[]], "setValue": [[float]], "setSpinBoxVisible": [[bool]]},
    ["setRange", "spinBox", "slider", "popup"],
)
PLACEHOLDERS = {cls.__name__: cls for cls in (qMRMLWidget, qMRMLNodeComboBox, qMRMLCheckableNodeComboBox,
                                              qMRMLTableView, ctkCollapsibleButton, ctkSliderWidget)}


def qt_class(name: str):
    """The class a .ui class name or a `qt.X` name stands for here."""
    if name in PLACEHOLDERS:
        return PLACEHOLDERS[name]
    for module in (QtWidgets, QtCore, QtGui):
        if hasattr(module, name):
            return getattr(module, name)
    return None


@pytest.fixture(scope="module")
def qapp():
    return QtWidgets.QApplication.instance() or QtWidgets.QApplication([])


@pytest.fixture(scope="module")
def loaded_ui(qapp):
    """The .ui loaded by QUiLoader with the placeholders, and every Qt message it printed."""
    messages = []
    previous = qInstallMessageHandler(lambda mode, context, message: messages.append(message))
    try:
        loader = QUiLoader()
        for cls in PLACEHOLDERS.values():
            loader.registerCustomWidget(cls)
        handle = QFile(str(UI_FILE))
        assert handle.open(QIODevice.ReadOnly)
        widget = loader.load(handle)
        handle.close()
        error = loader.errorString()
    finally:
        qInstallMessageHandler(previous)
    assert widget is not None, error
    return widget, messages, error


def ui_tree():
    return ET.parse(UI_FILE).getroot()


def ui_widgets():
    """(class, name, element) of every widget in the .ui, top level included."""
    return [(element.get("class"), element.get("name"), element) for element in ui_tree().iter("widget")]


def own_properties(element):
    """The <property> children of a widget element (not those of nested widgets)."""
    return [child for child in element if child.tag == "property"]


def dynamic_property(element, name):
    for child in own_properties(element):
        if child.get("name") == name and child.get("stdset") == "0":
            return child.find("string").text
    return None


def property_value(element, name):
    for child in own_properties(element):
        if child.get("name") == name:
            value = list(child)[0]
            if value.tag == "stringlist":
                return [s.text for s in value.findall("string")]
            if value.tag == "double":
                return float(value.text)
            if value.tag == "number":
                return int(value.text)
            if value.tag == "bool":
                return value.text == "true"
            return value.text
    return None


# --- (a) the .ui file ----------------------------------------------------------------------


def test_ui_loads_without_a_warning(loaded_ui):
    widget, messages, error = loaded_ui
    assert messages == [] and not error, (messages, error)
    assert type(widget).__name__ == "qMRMLWidget" and widget.objectName() == "VertebralMarrow"


def test_ui_every_widget_class_is_qt_or_declared_custom():
    root = ui_tree()
    declared = {c.find("class").text: c.find("extends").text for c in root.iter("customwidget")}
    for cls, name, _ in ui_widgets():
        if cls in declared:
            assert cls in PLACEHOLDERS, f"{name}: custom class {cls} has no placeholder in this test"
        else:
            assert hasattr(QtWidgets, cls), f"{name}: {cls} is neither a Qt widget nor declared in <customwidgets>"
    for cls, extends in declared.items():
        assert cls in PLACEHOLDERS
        assert extends in PLACEHOLDERS or hasattr(QtWidgets, extends), f"{cls} extends unknown {extends}"
    used = {cls for cls, _, _ in ui_widgets()}
    assert set(declared) <= used | {"qMRMLNodeComboBox"}, "declared custom widgets the .ui does not use"


def test_ui_every_property_exists_on_the_real_class(loaded_ui):
    """Properties without stdset="0" must be Qt properties of the class (QUiLoader would make
    a misspelt one a silent dynamic property, and so would Slicer)."""
    widget, _, _ = loaded_ui
    for cls, name, element in ui_widgets():
        instance = widget if name == widget.objectName() else widget.findChild(QtWidgets.QWidget, name)
        assert instance is not None, name
        meta = instance.metaObject()
        for child in own_properties(element):
            if child.get("stdset") == "0":
                continue
            assert meta.indexOfProperty(child.get("name")) >= 0, f"{name} ({cls}) has no property {child.get('name')}"
        dynamic = {bytes(n).decode() for n in instance.dynamicPropertyNames()}
        dynamic = {n for n in dynamic if not n.startswith(("_q_", "_PySide"))}  # Qt's and PySide's own
        expected = {c.get("name") for c in own_properties(element) if c.get("stdset") == "0"}
        assert dynamic == expected, f"{name}: dynamic properties {dynamic} != declared {expected}"


def test_ui_object_names_are_unique_and_the_widgets_load(loaded_ui):
    widget, _, _ = loaded_ui
    names = [name for _, name, _ in ui_widgets()]
    assert len(names) == len(set(names)), [n for n in names if names.count(n) > 1]
    for cls, name, _ in ui_widgets()[1:]:
        found = widget.findChild(QtWidgets.QWidget, name)
        assert found is not None and type(found).__name__ == cls, (name, cls, type(found))


def test_ui_sections_and_scene_connections(loaded_ui):
    widget, _, _ = loaded_ui
    sections = [(name, property_value(element, "text")) for cls, name, element in ui_widgets() if cls == "ctkCollapsibleButton"]
    assert [text for _, text in sections] == ["Inputs", "Segment roles", "Parameters", "Results", "Whole spine", "Follow-up"]
    connections = {(c.find("sender").text, c.find("signal").text, c.find("receiver").text, c.find("slot").text)
                   for c in ui_tree().iter("connection")}
    needs_scene = [name for cls, name, _ in ui_widgets() if cls in ("qMRMLNodeComboBox", "qMRMLCheckableNodeComboBox", "qMRMLTableView")]
    assert needs_scene
    for name in needs_scene:
        assert ("VertebralMarrow", "mrmlSceneChanged(vtkMRMLScene*)", name, "setMRMLScene(vtkMRMLScene*)") in connections, name
    assert len(connections) == len(needs_scene)


def test_ui_cutoff_tooltip_and_disclaimer():
    by_name = {name: element for _, name, element in ui_widgets()}
    assert property_value(by_name["cutoffSliderWidget"], "toolTip") == CUTOFF_TOOLTIP
    assert property_value(by_name["disclaimerLabel"], "text") == DISCLAIMER


def test_ui_min_voxels_ct_threshold_and_criteria_file_in_parameters():
    fields = parameter_fields()
    bound = bound_widgets()
    expected = {
        "minVoxels": ("int", 10, (1, 10000), "QSpinBox", "minVoxelsSpinBox"),
        "ctScleroticHu": ("float", 302.0, (0.0, 3000.0), "QDoubleSpinBox", "ctScleroticHuSpinBox"),
        "criteriaFile": ("str", "", None, "QLineEdit", "criteriaFileLineEdit"),
    }
    for parameter, (base, default, within, cls, name) in expected.items():
        field = fields[parameter]
        assert (field.base, field.default, field.within) == (base, default, within), parameter
        assert bound[parameter][:2] == (cls, name), parameter
    by_name = {name: element for _, name, element in ui_widgets()}
    ct_tooltip = property_value(by_name["ctScleroticHuSpinBox"], "toolTip")
    assert "Ulano A et al. AJR 2016; 207: 362-368" in ct_tooltip and "654 ± 176 HU" in ct_tooltip
    assert "mean − 2 SD" in ct_tooltip and property_value(by_name["ctScleroticHuLabel"], "toolTip") == ct_tooltip
    assert "project default" in property_value(by_name["minVoxelsSpinBox"], "toolTip")
    file_tooltip = property_value(by_name["criteriaFileLineEdit"], "toolTip")
    assert "override the file's" in file_tooltip and "built-in criteria.json" in file_tooltip
    # In the Parameters form, after the b-value limits, one label and one field a row.
    layout = by_name["parametersCollapsibleButton"].find("layout")
    rows = {}
    for item in layout.findall("item"):
        rows.setdefault(int(item.get("row")), []).append(item.find("widget").get("name"))
    assert sorted(rows) == list(range(len(rows))) and all(len(widgets) == 2 for widgets in rows.values())
    order = [name for row in sorted(rows) for name in rows[row]]
    assert order[order.index("bmaxSpinBox") + 1:] == ["minVoxelsLabel", "minVoxelsSpinBox", "ctScleroticHuLabel", "ctScleroticHuSpinBox",
                                                      *(f"{p}{w}" for p in ("marrowMax", "boneIslandHu", "fatT1Ratio", "fatFractionMin", "chemicalShiftDrop") for w in ("Label", "SpinBox")),
                                                      "criteriaFileLabel", "criteriaFileWidget"]


def test_ui_scene_signal_reaches_every_mrml_widget(loaded_ui):
    """The connections QUiLoader made are live: the top-level signal has one receiver per
    MRML widget (a wrong slot name would leave it short, with a warning)."""
    widget, _, _ = loaded_ui
    receivers = widget.receivers(QtCore.SIGNAL("mrmlSceneChanged(vtkMRMLScene*)"))
    needs_scene = [name for cls, name, _ in ui_widgets() if cls in ("qMRMLNodeComboBox", "qMRMLCheckableNodeComboBox", "qMRMLTableView")]
    assert receivers == len(needs_scene) == 23  # 16 + the whole spine (4) and the follow-up (3)


# =============================================================================================
# (b) every `self.ui.X` the module uses exists, with the members it uses
# =============================================================================================

# Objects the module makes with these calls, and the Qt class they are.
FACTORIES = {"slicer.util.createProgressDialog": "QProgressDialog"}


def dotted(node) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def ui_name(node):
    """'X' when node is `<something>.ui.X`, else None."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui":
        return node.attr
    return None


def widget_usages(tree):
    """(line, what, qt class name or ui object name, member, kind) for every member used on a
    `.ui.X` widget, on a local alias of one, or on an object made with qt.X(...) or a factory.
    kind: 'call', 'value' (read or assigned: a Qt property under PythonQt) or 'connect'."""
    usages = []
    for function in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
        aliases = {}
        for node in ast.walk(function):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                value = node.value
                if ui_name(value):
                    aliases[node.targets[0].id] = ("ui", ui_name(value))
                elif isinstance(value, ast.Call) and dotted(value.func).startswith("qt.") and dotted(value.func).count(".") == 1:
                    aliases[node.targets[0].id] = ("class", dotted(value.func)[3:])
                elif isinstance(value, ast.Call) and dotted(value.func) in FACTORIES:
                    aliases[node.targets[0].id] = ("class", FACTORIES[dotted(value.func)])

        def target(node):
            name = ui_name(node)
            if name:
                return ("ui", name)
            if isinstance(node, ast.Name) and node.id in aliases:
                return aliases[node.id]
            return None

        calls = {id(n.func): n for n in ast.walk(function) if isinstance(n, ast.Call)}
        for node in ast.walk(function):
            if not isinstance(node, ast.Attribute):
                continue
            owner = target(node.value)
            if owner is None:
                continue
            call = calls.get(id(node))
            if node.attr == "connect" and call is not None and call.args and isinstance(call.args[0], ast.Constant):
                usages.append((node.lineno, owner[0], owner[1], call.args[0].value, "connect"))
            else:
                usages.append((node.lineno, owner[0], owner[1], node.attr, "call" if call is not None else "value"))
    return usages


def module_tree():
    return ast.parse(MODULE_PY.read_text(encoding="utf-8"), feature_version=(3, 9))


def check_member(instance_or_class, member: str, kind: str) -> str:
    """'' when PythonQt would find `member` used as `kind` on this class, else the problem."""
    cls = instance_or_class if isinstance(instance_or_class, type) else type(instance_or_class)
    meta = getattr(cls, "staticMetaObject", None)
    if meta is None:  # not a QObject (QTableWidgetItem, ...): PythonQt wraps its methods only
        if kind != "call":
            return f"{cls.__name__} is not a QObject: it has no signals or properties"
        return "" if callable(getattr(cls, member, None)) else f"{cls.__name__} has no method {member}()"
    if kind == "connect":
        signature = QMetaObject.normalizedSignature(member).data().decode()
        return "" if meta.indexOfSignal(signature) >= 0 else f"no signal {member}"
    if kind == "value":
        if meta.indexOfProperty(member) >= 0:
            return ""
        return f"{member} is not a Qt property (PythonQt reads and writes properties as attributes)"
    if cls.__name__ in PLACEHOLDERS:
        # Only slots, signals and Q_INVOKABLE methods of the custom class itself, or members of its Qt base.
        if member in cls.__dict__ or any(member in base.__dict__ for base in cls.__mro__[1:] if base.__name__ in PLACEHOLDERS):
            return ""
        qt_base = next(base for base in cls.__mro__ if base.__name__ not in PLACEHOLDERS)
        return "" if hasattr(qt_base, member) else f"{cls.__name__} exposes no slot or Q_INVOKABLE {member}()"
    return "" if callable(getattr(cls, member, None)) else f"{cls.__name__} has no method {member}()"


def test_every_ui_widget_the_module_uses_exists_with_those_members(loaded_ui):
    widget, _, _ = loaded_ui
    names = {name for _, name, _ in ui_widgets()}
    usages = widget_usages(module_tree())
    used = {name for _, what, name, _, _ in usages if what == "ui"}
    assert {"applyButton", "segmentRolesTable", "resultsTableView", "differentialBrowser", "exportButton"} <= used
    problems = []
    for line, what, name, member, kind in usages:
        if what == "ui":
            if name not in names:
                problems.append(f"line {line}: self.ui.{name} is not an objectName in the .ui")
                continue
            instance = widget.findChild(QtWidgets.QWidget, name)
        else:
            instance = qt_class(name)
            if instance is None:
                problems.append(f"line {line}: qt.{name} is not a Qt class")
                continue
        problem = check_member(instance, member, kind)
        if problem:
            problems.append(f"line {line}: {name}.{member}: {problem}")
    assert problems == []


def test_member_check_catches_what_pythonqt_would_refuse(loaded_ui):
    """The check above fails on the mistakes it is there for."""
    widget, _, _ = loaded_ui
    combo = widget.findChild(QtWidgets.QWidget, "dwiVolumesSelector")
    assert check_member(combo, "nodeCount", "call") == ""
    assert check_member(combo, "nodes", "call")            # public C++ but not Q_INVOKABLE
    assert check_member(combo, "checkedNodesChanged()", "connect") == ""
    assert check_member(combo, "checkedNodesChanged(bool)", "connect")
    button = widget.findChild(QtWidgets.QWidget, "applyButton")
    assert check_member(button, "enabled", "value") == ""
    assert check_member(button, "enable", "value")
    assert check_member(button, "clicked(bool)", "connect") == ""
    tree = ast.parse("def f(self):\n    self.ui.nowhere.text = 'x'\n    c = qt.QComboBox()\n    c.connect('currentIndexChanged(int)', f)\n")
    assert ("ui", "nowhere", "text", "value") in [(u[1], u[2], u[3], u[4]) for u in widget_usages(tree)]
    assert ("class", "QComboBox", "currentIndexChanged(int)", "connect") in [(u[1], u[2], u[3], u[4]) for u in widget_usages(tree)]


# =============================================================================================
# (c) SlicerParameterName <-> the parameter node's fields, and the widget for each type
# =============================================================================================


def parameter_class_node(tree):
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(dotted(d) == "parameterNodeWrapper" for d in node.decorator_list):
            return node
    raise AssertionError("no @parameterNodeWrapper class in VertebralMarrow.py")


@dataclasses.dataclass
class Field:
    name: str
    annotation: str
    base: str                  # float | int | str | bool | node | list
    node_types: tuple = ()
    within: tuple = None       # WithinRange(min, max)
    choices: tuple = None      # Choice([...])
    default: object = None
    has_default: bool = False


def parameter_fields():
    """The annotated fields of the @parameterNodeWrapper class, read with `ast`."""
    fields = {}
    for statement in parameter_class_node(module_tree()).body:
        if not isinstance(statement, ast.AnnAssign):
            continue
        name = statement.target.id
        annotation = statement.annotation
        field = Field(name, ast.unparse(annotation), "")
        if isinstance(annotation, ast.Subscript) and dotted(annotation.value) == "Annotated":
            elements = annotation.slice.elts
            inner = elements[0]
            for extra in elements[1:]:
                if isinstance(extra, ast.Call) and dotted(extra.func) == "WithinRange":
                    field.within = tuple(ast.literal_eval(a) for a in extra.args)
                elif isinstance(extra, ast.Call) and dotted(extra.func) == "_within":  # a setting's range
                    setting = SETTING[ast.literal_eval(extra.args[0])]
                    field.within = (setting.low, setting.high)
                elif isinstance(extra, ast.Call) and dotted(extra.func) == "Choice":
                    field.choices = tuple(_literal_or_setting(extra.args[0]))
        else:
            inner = annotation
        if isinstance(inner, ast.Name) and inner.id in ("float", "int", "str", "bool"):
            field.base = inner.id
        elif isinstance(inner, ast.Name) and inner.id.startswith("vtkMRML"):
            field.base, field.node_types = "node", (inner.id,)
        elif isinstance(inner, ast.Subscript) and dotted(inner.value) in ("List", "list", "typing.List"):
            field.base = "list"
        elif isinstance(inner, ast.Subscript) and dotted(inner.value) in ("Union", "Optional", "typing.Union", "typing.Optional"):
            members = inner.slice.elts if isinstance(inner.slice, ast.Tuple) else [inner.slice]
            names = [m.id for m in members if isinstance(m, ast.Name) and m.id.startswith("vtkMRML")]
            field.base, field.node_types = "node", tuple(names)
        else:
            raise AssertionError(f"field {name}: annotation {field.annotation} not understood by this test")
        if statement.value is not None:
            field.default, field.has_default = _literal_or_setting(statement.value), True
        fields[name] = field
    return fields


def _literal_or_setting(node):
    """A literal, or what the module file takes from the settings table: `_default("name")`
    and `list(SETTING["name"].choices)`."""
    if isinstance(node, ast.Call) and dotted(node.func) == "_default":
        return SETTING[ast.literal_eval(node.args[0])].default_value()
    if isinstance(node, ast.Call) and dotted(node.func) == "list" and isinstance(node.args[0], ast.Attribute):
        return list(SETTING[ast.literal_eval(node.args[0].value.slice)].choices)
    if isinstance(node, ast.Call) and dotted(node.func) == "_spineDefault":  # criteria.json's spine section
        from VertebralMarrowLib.slicer_panel.spine import spine_default

        return spine_default(ast.literal_eval(node.args[0]))
    if isinstance(node, ast.Call) and dotted(node.func) == "list" and dotted(node.args[0]) == "SCHEME_CHOICES":
        from VertebralMarrowLib.spine_analysis import SCHEME_CHOICES

        return list(SCHEME_CHOICES)
    return ast.literal_eval(node)


# Slicer's parameterNodeWrapper GUI connectors (guiConnectors.py, canRepresent): the exact
# widget classes (type(widget) in (...), so no subclasses) that can carry each type.
FLOAT_WIDGETS = {"QDoubleSpinBox", "ctkSliderWidget", "qMRMLSliderWidget", "ctkDoubleSlider", "ctkDoubleSpinBox", "qMRMLSpinBox"}
CONNECTORS = {
    "bool": {"QCheckBox", "ctkCheckBox", "QPushButton", "ctkCheckablePushButton"},
    "int": {"QSlider", "QSpinBox"} | FLOAT_WIDGETS,
    "float": FLOAT_WIDGETS,
    "str": {"QLineEdit", "QLabel", "QTextEdit"},
    "node": {"qMRMLNodeComboBox"},
    "list": set(),
}
CHOICE_WIDGETS = {"QComboBox", "ctkComboBox"}      # any of int/float/str/bool, with a Choice annotation
NEEDS_BOUNDS = {"ctkSliderWidget", "qMRMLSliderWidget", "QSlider"}


def connector_problem(cls: str, field: Field) -> str:
    if cls in CHOICE_WIDGETS and field.base in ("int", "float", "str", "bool"):
        return "" if field.choices else f"{cls} needs a Choice annotation on {field.name}"
    if cls not in CONNECTORS[field.base]:
        return f"{cls} cannot carry a {field.base} parameter ({field.name}): no GUI connector"
    if cls in NEEDS_BOUNDS and field.within is None:
        return f"{cls} needs WithinRange on {field.name}"
    return ""


def bound_widgets():
    bound = {}
    for cls, name, element in ui_widgets():
        parameter = dynamic_property(element, "SlicerParameterName")
        if parameter:
            assert parameter not in bound, f"{parameter} is bound to {bound[parameter][1]} and {name}"
            bound[parameter] = (cls, name, element)
    return bound


def test_parameter_names_match_fields_and_widget_types():
    fields = parameter_fields()
    bound = bound_widgets()
    assert set(bound) <= set(fields), f"SlicerParameterName without a field: {set(bound) - set(fields)}"
    problems = [connector_problem(cls, fields[parameter]) for parameter, (cls, _, _) in bound.items()]
    assert [p for p in problems if p] == []
    # Every field is on the panel, but the DWI volume list: no connector exists for a node
    # list, so the widget keeps a qMRMLCheckableNodeComboBox in step with it by hand.
    assert set(fields) - set(bound) == {"dwiVolumes"}
    usages = widget_usages(module_tree())
    assert any(name == "dwiVolumesSelector" and member == "checkedNodesChanged()" for _, _, name, member, _ in usages)


def test_parameter_widgets_agree_with_ranges_defaults_and_node_types():
    fields = parameter_fields()
    for parameter, (cls, name, element) in bound_widgets().items():
        field = fields[parameter]
        if field.base == "node":
            assert property_value(element, "nodeTypes") == list(field.node_types), name
        if field.within is not None:
            assert (property_value(element, "minimum"), property_value(element, "maximum")) == tuple(map(float, field.within)), name
            assert field.within[0] <= field.default <= field.within[1], name
            assert property_value(element, "value") == pytest.approx(field.default), name
        if field.choices is not None:
            items = [item.find("property/string").text for item in element.findall("item")]
            assert items == list(field.choices), name
            assert field.default in field.choices, name
    assert fields["cutoff"].default == 1.21 and fields["cutoff"].within == (0.1, 4.0)
    assert fields["adcUnits"].choices == panel.ADC_UNIT_CHOICES
    assert fields["fitMethod"].choices == panel.FIT_METHOD_CHOICES


def test_overlay_display_fields_sit_with_the_overlay_controls():
    """Issue 5's display choices: the continuous ADC map (foreground) with its opacity, lesion
    segments coloured by class, and the published ADC map, in the Results section next to the
    overlay's show/opacity controls, each bound to its field with the field's default."""
    fields = parameter_fields()
    expected = {
        "showAdcColorMap": ("bool", False, "QCheckBox", "showAdcColorMapCheckBox"),
        "adcColorMapOpacity": ("float", 0.5, "ctkSliderWidget", "adcColorMapOpacitySliderWidget"),
        "colorSegmentsByClass": ("bool", False, "QCheckBox", "colorSegmentsByClassCheckBox"),
        "adcMapVolume": ("node", None, "qMRMLNodeComboBox", "adcMapSelector"),
    }
    bound = bound_widgets()
    for parameter, (base, default, cls, name) in expected.items():
        field = fields[parameter]
        assert (field.base, field.default) == (base, default), parameter
        assert bound[parameter][:2] == (cls, name), parameter
    assert fields["adcColorMapOpacity"].within == (0.0, 1.0)
    assert fields["adcMapVolume"].node_types == ("vtkMRMLScalarVolumeNode",) and not fields["adcMapVolume"].has_default
    by_name = {name: element for _, name, element in ui_widgets()}
    assert property_value(by_name["showAdcColorMapCheckBox"], "text") == "Continuous ADC map (red \u2264 cut-off < green)"
    assert property_value(by_name["colorSegmentsByClassCheckBox"], "text") == "Colour lesion segments by class"
    tooltip = property_value(by_name["colorSegmentsByClassCheckBox"], "toolTip")
    assert "Changes the colours of your segmentation" in tooltip and "unticking gives it back" in tooltip
    assert property_value(by_name["adcMapSelector"], "showChildNodeTypes") is False   # no labelmaps
    assert property_value(by_name["adcColorMapOpacitySliderWidget"], "value") == 0.5

    # In the Results form, in this order, right after the overlay's opacity.
    results = by_name["resultsCollapsibleButton"].find("layout")
    rows = {}
    for item in results.findall("item"):
        rows.setdefault(int(item.get("row")), []).append(item.find("widget").get("name"))
    order = [name for row in sorted(rows) for name in rows[row]]
    start = order.index("overlayOpacitySliderWidget") + 1
    assert order[start:start + 8] == ["adcMapLabel", "adcMapSelector", "showAdcColorMapLabel", "showAdcColorMapCheckBox",
                                      "adcColorMapOpacityLabel", "adcColorMapOpacitySliderWidget",
                                      "colorSegmentsByClassLabel", "colorSegmentsByClassCheckBox"]
    assert all(len(widgets) <= 2 for widgets in rows.values()) and sorted(rows) == list(range(len(rows)))
    # The selector lists only published ADC maps, by the attribute publish sets.
    source = MODULE_PY.read_text(encoding="utf-8")
    assert 'self.ui.adcMapSelector.addAttribute("vtkMRMLScalarVolumeNode", panel.ADC_MAP_ATTRIBUTE, "1")' in source


def test_connector_rules_catch_a_wrong_widget():
    float_field = Field("x", "float", "float", within=(0, 1), default=0.5, has_default=True)
    assert connector_problem("QDoubleSpinBox", float_field) == ""
    assert connector_problem("QLineEdit", float_field)
    assert connector_problem("ctkSliderWidget", Field("y", "float", "float"))
    assert connector_problem("QComboBox", Field("u", "str", "str"))                  # Choice missing
    assert connector_problem("qMRMLCheckableNodeComboBox", Field("n", "vtkMRMLNode", "node", ("vtkMRMLNode",)))
    assert connector_problem("QTextBrowser", Field("s", "str", "str"))                # exact class only


def test_parameter_annotations_evaluate_under_python_39():
    """parameterNodeWrapper evaluates the annotations (typing.get_type_hints) in Slicer's
    Python, 3.9 in releases still in use: no `X | Y`, no 3.10+ typing."""
    cls = parameter_class_node(module_tree())
    for statement in cls.body:
        if isinstance(statement, ast.AnnAssign):
            assert not any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) for n in ast.walk(statement.annotation)), \
                f"{statement.target.id}: `X | Y` fails when the wrapper evaluates it on Python 3.9"
    python39 = find_python39()
    if python39 is None:
        pytest.skip("no Python 3.9 interpreter here to evaluate the annotations with")
    script = (
        "import ast, sys, typing\n"
        "from typing import Annotated, List, Optional, Union\n"
        "source = open(sys.argv[1], encoding='utf-8').read()\n"
        "tree = ast.parse(source)\n"
        "cls = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == sys.argv[2]][0]\n"
        "class Stub:\n"
        "    def __init__(self, *a, **k): pass\n"
        "import collections\n"
        "namespace = {'Annotated': Annotated, 'List': List, 'Optional': Optional, 'Union': Union,\n"
        "             'WithinRange': Stub, 'Choice': Stub, '_within': Stub, 'SCHEME_CHOICES': (),\n"
        "             'SETTING': collections.defaultdict(lambda: type('Setting', (), {'choices': ()})())}\n"
        "for n in ast.walk(cls):\n"
        "    if isinstance(n, ast.Name) and n.id.startswith('vtkMRML'):\n"
        "        namespace[n.id] = type(n.id, (), {})\n"
        "holder = type('Holder', (), {'__annotations__': {s.target.id: ast.get_source_segment(source, s.annotation)\n"
        "               for s in cls.body if isinstance(s, ast.AnnAssign)}, '__module__': '__main__'})\n"
        "globals().update(namespace)\n"
        "hints = typing.get_type_hints(holder, globalns=namespace, include_extras=True)\n"
        "print(len(hints))\n"
    )
    result = subprocess.run([python39, "-c", script, str(MODULE_PY), cls.name], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) == len(parameter_fields())


# =============================================================================================
# (d) Python 3.9 syntax for everything under VertebralMarrow/
# =============================================================================================


def module_python_files():
    files = [MODULE_PY] + sorted(LIB_DIR.rglob("*.py"))
    return [path for path in files if "__pycache__" not in path.parts]


def find_python39():
    """A working Python 3.9 (pyenv's own install first: its shims may refuse to run)."""
    candidates = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9"))) + [shutil.which("python3.9")]
    for candidate in candidates:
        if not candidate or not os.access(candidate, os.X_OK):
            continue
        probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == "(3, 9)":
            return candidate
    return None


RUNTIME_310 = (
    (re.compile(r"\bzip\([^)]*\bstrict\s*="), "zip(strict=) is Python 3.10+"),
    (re.compile(r"@dataclass\([^)]*\b(slots|kw_only)\s*="), "dataclass(slots=/kw_only=) is Python 3.10+"),
    (re.compile(r"\bfrom\s+itertools\s+import\s+[^\n]*\bpairwise\b"), "itertools.pairwise is Python 3.10+"),
    (re.compile(r"\bfrom\s+typing\s+import\s+[^\n]*\b(TypeAlias|ParamSpec|Concatenate|TypeGuard|Self|Never)\b"), "typing name from 3.10+"),
)


@pytest.mark.parametrize("path", module_python_files(), ids=lambda p: p.name)
def test_python_39_syntax(path):
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path), feature_version=(3, 9))
    future = any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations" for a in n.names)
                 for n in tree.body)
    annotations = [n for n in ast.walk(tree) if isinstance(n, (ast.AnnAssign, ast.arg, ast.FunctionDef))]
    uses_union = any(isinstance(x, ast.BinOp) and isinstance(x.op, ast.BitOr)
                     for n in annotations for a in ([n.annotation] if isinstance(n, (ast.AnnAssign, ast.arg)) else [n.returns])
                     if a is not None for x in ast.walk(a))
    assert future or not uses_union, f"{path.name}: `X | Y` in annotations needs `from __future__ import annotations` on 3.9"
    for node in ast.walk(tree):   # `X | None` evaluated at run time (isinstance, casts) fails on 3.9
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            parent_is_annotation = False
            for ann in annotations:
                targets = [ann.annotation] if isinstance(ann, (ast.AnnAssign, ast.arg)) else [ann.returns]
                if any(t is not None and node in ast.walk(t) for t in targets):
                    parent_is_annotation = True
            if not parent_is_annotation:
                sides = (node.left, node.right)
                assert not any(isinstance(s, ast.Constant) and s.value is None for s in sides), \
                    f"{path.name}:{node.lineno}: `X | None` at run time fails on Python 3.9"
    for pattern, why in RUNTIME_310:
        match = pattern.search(source)
        assert match is None, f"{path.name}: {why}"


def test_python_39_compiles_every_module_file():
    python39 = find_python39()
    if python39 is None:
        pytest.skip("no Python 3.9 interpreter here; the feature_version=(3, 9) parse above still runs")
    script = "import sys\nfor p in sys.argv[1:]:\n    compile(open(p, encoding='utf-8').read(), p, 'exec')\n"
    result = subprocess.run([python39, "-c", script, *map(str, module_python_files())], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# =============================================================================================
# (e) every file under VertebralMarrow/ is listed in VertebralMarrow/CMakeLists.txt
# =============================================================================================


def cmake_lists(text: str, module_name: str = "VertebralMarrow"):
    """(scripts, resources) of a module CMakeLists.txt: the set(MODULE_PYTHON_SCRIPTS ...)
    and set(MODULE_PYTHON_RESOURCES ...) entries with ${MODULE_NAME} expanded."""
    text = re.sub(r"#[^\n]*", "", text)
    name = re.search(r"set\(\s*MODULE_NAME\s+(\S+?)\s*\)", text)
    module_name = name.group(1) if name else module_name

    def entries(variable):
        found = re.search(r"set\(\s*" + variable + r"\b(.*?)\)", text, re.S)
        if not found:
            return []
        return [item.replace("${MODULE_NAME}", module_name) for item in found.group(1).split()]

    return entries("MODULE_PYTHON_SCRIPTS"), entries("MODULE_PYTHON_RESOURCES")


def module_files():
    """(python files, resource files) under VertebralMarrow/ as paths relative to it."""
    scripts, resources = [], []
    for path in sorted(MODULE_DIR.rglob("*")):
        relative = path.relative_to(MODULE_DIR)
        parts = relative.parts
        if path.is_dir() or "__pycache__" in parts or parts[0].endswith(".egg-info") or parts[0] == "Testing":
            continue
        if relative.name == "CMakeLists.txt" or relative.suffix == ".pyc":
            continue
        (scripts if relative.suffix == ".py" else resources).append(relative.as_posix())
    return scripts, resources


def listing_problems(cmake_text: str, scripts, resources, existing) -> list:
    listed_scripts, listed_resources = cmake_lists(cmake_text)
    problems = [f"{f} is not in MODULE_PYTHON_SCRIPTS" for f in scripts if f not in listed_scripts]
    problems += [f"{f} is not in MODULE_PYTHON_RESOURCES" for f in resources if f not in listed_resources]
    problems += [f"{f} is listed but does not exist" for f in listed_scripts + listed_resources if f not in existing]
    problems += [f"{f} is a test: tests do not ship" for f in listed_scripts if f.startswith("Testing/")]
    cleaned = re.sub(r"#[^\n]*", "", cmake_text)
    if "WITH_GENERIC_TESTS" not in cleaned:
        problems.append("slicerMacroBuildScriptedModule lacks WITH_GENERIC_TESTS")
    if not re.search(r"if\s*\(\s*BUILD_TESTING\s*\).*?slicer_add_python_unittest\(\s*SCRIPT\s+\$\{MODULE_NAME\}\.py\s*\).*?endif",
                     cleaned, re.S):
        problems.append("no slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py) inside if(BUILD_TESTING)")
    return problems


def test_listing_check_fails_on_an_unlisted_file():
    text = ("set(MODULE_NAME VertebralMarrow)\nset(MODULE_PYTHON_SCRIPTS\n  ${MODULE_NAME}.py\n  )\n"
            "set(MODULE_PYTHON_RESOURCES\n  Resources/UI/${MODULE_NAME}.ui\n  )\n"
            "slicerMacroBuildScriptedModule(NAME x WITH_GENERIC_TESTS)\n"
            "if(BUILD_TESTING)\n  slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)\nendif()\n")
    existing = {"VertebralMarrow.py", "Resources/UI/VertebralMarrow.ui", "VertebralMarrowLib/panel.py"}
    assert listing_problems(text, ["VertebralMarrow.py"], ["Resources/UI/VertebralMarrow.ui"], existing) == []
    assert listing_problems(text, ["VertebralMarrow.py", "VertebralMarrowLib/panel.py"], ["Resources/UI/VertebralMarrow.ui"], existing) \
        == ["VertebralMarrowLib/panel.py is not in MODULE_PYTHON_SCRIPTS"]
    assert listing_problems(text.replace("WITH_GENERIC_TESTS", ""), ["VertebralMarrow.py"], [], existing)
    assert listing_problems(text.replace("if(BUILD_TESTING)", "if(FOO)"), ["VertebralMarrow.py"], [], existing)


def test_cmake_lists_every_module_file():
    assert MODULE_CMAKE.is_file(), "VertebralMarrow/CMakeLists.txt is missing"
    scripts, resources = module_files()
    assert "VertebralMarrow.py" in scripts and "Resources/UI/VertebralMarrow.ui" in resources
    assert "Resources/Icons/VertebralMarrow.png" in resources
    existing = set(scripts) | set(resources)
    assert listing_problems(MODULE_CMAKE.read_text(encoding="utf-8"), scripts, resources, existing) == []


def test_icons_are_128_pixel_pngs():
    from PIL import Image

    for path in (MODULE_DIR / "Resources" / "Icons" / "VertebralMarrow.png", ROOT / "Resources" / "VertebralMarrow.png"):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (128, 128), path


# =============================================================================================
# (f) the panel's library functions on real MRML
# =============================================================================================


def parameters(**values):
    """Stand-in for the parameter node wrapper: the fields with their defaults, then `values`."""
    fields = parameter_fields()
    defaults = {name: (field.default if field.has_default else ([] if field.base == "list" else None))
                for name, field in fields.items()}
    unknown = set(values) - set(defaults)
    assert not unknown, unknown
    defaults.update(values)
    return SimpleNamespace(**defaults)


@pytest.fixture()
def app():
    return new_scene()


def test_options_from_parameters_maps_every_numeric_field():
    options = panel.options_from_parameters(parameters(cutoff=1.1, indeterminateBand=0.05, signalLowBelow=0.7,
                                                       signalHighAbove=1.3, adcUnits="1e-6", fitMethod="ols",
                                                       bmin=50.0, bmax=0.0))
    assert (options.adc_cutoff, options.indeterminate_band, options.signal_low_below, options.signal_high_above) == (1.1, 0.05, 0.7, 1.3)
    assert (options.adc_units, options.fit_method, options.bmin, options.bmax) == ("1e-6", "ols", 50.0, None)
    resolved = panel.options_from_parameters(parameters()).resolved()
    assert resolved.adc_cutoff == 1.21 and resolved.bmin is None and resolved.bmax is None
    assert (resolved.min_voxels, resolved.ct_sclerotic_min_hu) == (10, 302.0)


def test_options_from_parameters_passes_min_voxels_ct_threshold_and_criteria_file(tmp_path):
    options = panel.options_from_parameters(parameters(minVoxels=25, ctScleroticHu=400.0))
    assert (options.min_voxels, options.ct_sclerotic_min_hu, options.criteria_path) == (25, 400.0, None)
    assert type(options.min_voxels) is int and type(options.ct_sclerotic_min_hu) is float
    assert panel.options_from_parameters(parameters(criteriaFile="   ")).criteria_path is None
    resolved = options.resolved()
    assert (resolved.min_voxels, resolved.ct_sclerotic_min_hu) == (25, 400.0)

    # A criteria file of the user's own: its tables are used, the panel's numbers override its own.
    criteria = load_criteria()
    criteria["references"]["kaur2020"] = "My own reference for the cut-off."
    criteria["entities"]["hemangioma"]["adc"]["mean"] = 1.5
    criteria["adc_cutoff"]["value"], criteria["min_voxels"]["value"], criteria["ct"]["sclerotic_min_hu"] = 1.0, 3, 250
    own = tmp_path / "my criteria.json"
    own.write_text(json.dumps(criteria), encoding="utf-8")
    options = panel.options_from_parameters(parameters(criteriaFile=f" {own} ", minVoxels=12))
    assert options.criteria_path == own
    resolved = options.resolved()
    assert resolved.criteria["entities"]["hemangioma"]["adc"]["mean"] == 1.5
    assert resolved.criteria["references"]["kaur2020"] == "My own reference for the cut-off."
    assert (resolved.adc_cutoff, resolved.min_voxels, resolved.ct_sclerotic_min_hu) == (1.21, 12, 302.0)


def test_a_missing_criteria_file_is_an_input_error(tmp_path):
    missing = tmp_path / "nowhere" / "criteria.json"
    with pytest.raises(InputError, match=r"criteria file '.*nowhere.criteria\.json' does not exist") as error:
        panel.options_from_parameters(parameters(criteriaFile=str(missing)))
    assert "clear the Criteria file field to use the built-in one" in str(error.value)
    with pytest.raises(InputError, match="is not a file"):
        panel.options_from_parameters(parameters(criteriaFile=str(tmp_path)))
    broken = tmp_path / "broken.json"
    broken.write_text("{ not json", encoding="utf-8")
    with pytest.raises(InputError, match="cannot read criteria file"):
        panel.options_from_parameters(parameters(criteriaFile=str(broken))).resolved()


def test_clinical_defaults_equal_the_criteria_file():
    """The panel's defaults are the built-in criteria.json's values (literals in the parameter
    node and the .ui, kept equal here so that they cannot drift apart)."""
    criteria = load_criteria()
    fields = parameter_fields()
    expected = {
        "cutoff": criteria["adc_cutoff"]["value"],
        "indeterminateBand": criteria["indeterminate_band"]["value"],
        "signalLowBelow": criteria["signal_ratio"]["low_below"],
        "signalHighAbove": criteria["signal_ratio"]["high_above"],
        "minVoxels": criteria["min_voxels"]["value"],
        "ctScleroticHu": criteria["ct"]["sclerotic_min_hu"],
    }
    bound = bound_widgets()
    for parameter, value in expected.items():
        assert fields[parameter].default == value, f"{parameter}: {fields[parameter].default} != criteria.json {value}"
        assert property_value(bound[parameter][2], "value") == value, parameter
    assert fields["criteriaFile"].default == ""
    # The whole spine's settings: criteria.json's spine section, where the spine command takes them from.
    for parameter, key in (("spineErosionMm", "erosion_mm"), ("spineOutlierRobustSd", "outlier_robust_sd"),
                           ("spineHeightLossBelow", "height_loss_below")):
        assert fields[parameter].default == criteria["spine"][key]["value"], parameter
        assert property_value(bound[parameter][2], "value") == criteria["spine"][key]["value"], parameter
    resolved = Options().resolved()
    options = panel.options_from_parameters(parameters())
    for name in ("adc_cutoff", "indeterminate_band", "signal_low_below", "signal_high_above", "min_voxels",
                 "ct_sclerotic_min_hu"):
        assert getattr(options, name) == getattr(resolved, name), name


def test_study_from_parameters_and_apply_blocker(app):
    study, _ = panel.self_test_study(app.scene, app)
    assert panel.apply_blocker(parameters()) .startswith("Select the segmentation")
    assert "ADC map" in panel.apply_blocker(parameters(segmentation=study.segmentation))
    both = parameters(segmentation=study.segmentation, adcVolume=study.adc, dwiVolumes=[study.t1, study.t2])
    assert "not both" in panel.apply_blocker(both)
    with pytest.raises(InputError, match="not both"):
        panel.study_from_parameters(both)
    with pytest.raises(InputError, match="segmentation"):
        panel.study_from_parameters(parameters(adcVolume=study.adc))
    ready = parameters(segmentation=study.segmentation, adcVolume=study.adc, t1Volume=study.t1, fsVolume=study.fs)
    assert panel.apply_blocker(ready) == ""
    built = panel.study_from_parameters(ready)
    assert (built.segmentation, built.adc, built.t1, built.t2, built.fs, built.dwi) == (study.segmentation, study.adc, study.t1, None, study.fs, [])


def dwi_volumes(scene, names, shape=(3, 4, 5)):
    return [volume_from_array(scene, np.full(shape, 100.0 - i, np.float32), np.eye(4), name) for i, name in enumerate(names)]


@pytest.mark.parametrize("name, expected", [
    ("DWI b=800", 800.0), ("dwi_b0800", 800.0), ("B800", 800.0), ("dwi b 50", 50.0), ("ep2d_diff_b1000", 1000.0),
    ("DWI b=0", 0.0), ("T2 axial", None), ("abdomen", None), ("b", None), ("ADC", None),
])
def test_bvalue_from_name(name, expected):
    assert panel.bvalue_from_name(name) == expected


def test_dwi_inputs_from_volumes_text_and_names(app):
    nodes = dwi_volumes(app.scene, ["DWI b=0", "DWI b=50", "DWI b=800"])
    assert panel.dwi_inputs(None, nodes, "")[1:] == ([0.0, 50.0, 800.0], "the volume names")
    assert panel.dwi_inputs(None, nodes, " 0, 100,1000 ")[1:] == ([0.0, 100.0, 1000.0], "the b-values field")
    with pytest.raises(InputError, match="3 DWI volumes but 2 b-values"):
        panel.dwi_inputs(None, nodes, "0,800")
    unnamed = dwi_volumes(app.scene, ["first", "second"])
    with pytest.raises(InputError, match="no b-value for DWI volume"):
        panel.dwi_inputs(None, unnamed, "")
    with pytest.raises(InputError, match="two or more"):
        panel.dwi_inputs(None, nodes[:1], "0")


def test_dwi_inputs_from_a_sequence(app):
    sequence = slicer.vtkMRMLSequenceNode()
    app.scene.AddNode(sequence)
    sequence.SetName("DWI series")
    for b in (0, 400, 800):
        node = slicer.vtkMRMLScalarVolumeNode()
        node.SetName(f"frame {b}")
        slicer.util.updateVolumeFromArray(node, np.full((2, 3, 4), 1000.0 * np.exp(-b * 0.001), np.float32))
        sequence.SetDataNodeAtValue(node, str(b))
    with pytest.raises(InputError, match="no b-value"):  # index 'time' in s: not b-values, names have none
        panel.dwi_inputs(sequence, (), "")
    assert panel.dwi_inputs(sequence, (), "0,400,800")[1] == [0.0, 400.0, 800.0]
    sequence.SetIndexName("b-value")
    sequence.SetIndexUnit("s/mm2")
    nodes, bvalues, source = panel.dwi_inputs(sequence, (), "")
    assert bvalues == [0.0, 400.0, 800.0] and "DWI series" in source
    assert [float(array_of(n).max()) for n in nodes] == pytest.approx([1000.0 * np.exp(-b * 0.001) for b in (0, 400, 800)])
    with pytest.raises(InputError, match="sequence or DWI volumes"):
        panel.dwi_inputs(sequence, dwi_volumes(app.scene, ["DWI b=0"]), "")
    text = panel.dwi_summary(parameters(dwiSequence=sequence))
    assert "b=400: frame 400" in text and "3 volumes" in text


def test_dwi_inputs_expand_a_diffusion_weighted_volume(app):
    node = slicer.vtkMRMLDiffusionWeightedVolumeNode()
    node.SetName("dwmri")
    app.scene.AddNode(node)
    bvalues = [0.0, 500.0, 1000.0]
    node.SetNumberOfGradients(3)
    for index, b in enumerate(bvalues):
        node.SetBValue(index, b)
    signal = np.stack([np.full((2, 3, 4), 900.0 * np.exp(-b * 0.0008), np.float32) for b in bvalues], axis=-1)
    image = vtk.vtkImageData()
    image.SetDimensions(4, 3, 2)
    image.AllocateScalars(vtk.VTK_FLOAT, 3)
    node.SetAndObserveImageData(image)
    array_of(node)[:] = signal
    matrix = np.diag([2.0, 2.0, 3.0, 1.0])
    matrix[:3, 3] = (10.0, -5.0, 7.0)
    from VertebralMarrowLib.mrml import set_ijk_to_ras
    set_ijk_to_ras(node, matrix)
    nodes, values, source = panel.dwi_inputs(None, [node], "")
    assert values == bvalues and source == "the diffusion-weighted or multi-volume node"
    for volume, b in zip(nodes, bvalues):
        assert np.allclose(ijk_to_ras_of(volume), matrix)
        assert array_of(volume).shape == (2, 3, 4)
        assert float(array_of(volume)[0, 0, 0]) == pytest.approx(900.0 * np.exp(-b * 0.0008))


def test_segment_roles_rows_set_and_survive_a_save(app, tmp_path):
    study, _ = panel.self_test_study(app.scene, app)
    segmentation = study.segmentation
    rows = panel.segment_role_rows(segmentation)
    assert [(name, role) for _, name, role in rows] == [("L2 lesion", "lesion"), ("L4 lesion", "lesion"), ("L3 normal", "reference")]
    assert panel.segment_role_rows(None) == []
    l4 = rows[1][0]
    assert panel.set_role(segmentation, l4, "ignore") is True
    assert panel.set_role(segmentation, l4, "ignore") is False
    assert panel.set_role(segmentation, rows[0][0], "lesion") is True   # the default becomes a tag
    with pytest.raises(InputError):
        panel.set_role(segmentation, l4, "tumour")
    path = tmp_path / "rois.seg.nrrd"
    write_node(app.scene, segmentation, path)
    other = new_scene()
    reloaded = load_segmentation(other.scene, other, path)
    assert [(name, role) for _, name, role in panel.segment_role_rows(reloaded)] == \
        [("L2 lesion", "lesion"), ("L4 lesion", "ignore"), ("L3 normal", "reference")]


@pytest.mark.parametrize("dwi", [False, True], ids=["adc-map", "dwi-fit"])
def test_self_test_study_gives_what_the_slicer_test_asserts(app, dwi):
    """VertebralMarrowTest (in Slicer) asserts these numbers; here they are checked on the
    same study, so a failure there is the Slicer binding, not the data."""
    study, expected = panel.self_test_study(app.scene, app, dwi=dwi)
    if dwi:
        # as the Slicer test passes them: volumes, b-values from their names
        study.dwi, study.bvalues, _ = panel.dwi_inputs(None, study.dwi, "")
    result = analyze(app.scene, study, panel.options_from_parameters(parameters()), app=app)
    rows = {row["segment"]: row for row in result.rows}
    assert [row["segment"] for row in result.rows] == ["L2 lesion", "L4 lesion", "L3 normal"]
    for name, (role, adc_class) in expected["rows"].items():
        assert (rows[name]["role"], rows[name]["adc_class"]) == (role, adc_class)
        assert rows[name]["adc_mean"] == pytest.approx(expected["adc_mean"][name], abs=1e-3 if dwi else 1e-6)
        assert rows[name]["n_voxels_adc"] == expected["n_voxels_adc"]
    for name, signals in expected["signals"].items():
        assert (rows[name]["t1_signal"], rows[name]["t2_signal"], rows[name]["fs_signal"]) == signals
    assert rows["L4 lesion"]["differential"].split(";")[0] == expected["first_entity"]["L4 lesion"]
    values, counts = np.unique(result.overlay, return_counts=True)
    assert dict(zip(values.tolist(), counts.tolist())) == expected["overlay_counts"]


def test_publish_reuses_nodes_and_follows_a_new_grid(app):
    study, _ = panel.self_test_study(app.scene, app)
    first = analyze(app.scene, study, None, app=app)
    published = panel.publish(app.scene, first)
    assert published.table.GetNumberOfRows() == 3
    assert published.overlay.GetDisplayNode().GetColorNode() is published.colors
    assert published.colors.GetColorName(3) == "malignant-range"
    document = panel.result_from_table(published.table)
    assert document["disclaimer"] == DISCLAIMER and [r["segment"] for r in document["rows"]] == ["L2 lesion", "L4 lesion", "L3 normal"]
    assert panel.lesion_names(document) == ["L2 lesion", "L4 lesion"]

    # The same study on a shifted, finer ADC grid: the reused overlay must take the new grid.
    shifted = np.diag([1.0, 1.0, 1.0, 1.0])
    shifted[:3, 3] = (3.0, -2.0, 1.0)
    finer = np.kron(np.array(array_of(study.adc)), np.ones((2, 2, 2), np.float32))
    study.adc = volume_from_array(app.scene, finer, shifted, "finer ADC")
    second = analyze(app.scene, study, None, app=app)
    counts = app.scene.GetNumberOfNodes()
    again = panel.publish(app.scene, second, table=published.table, overlay=published.overlay, adc_map=published.adc_map)
    assert (again.table, again.overlay, again.colors) == (published.table, published.overlay, published.colors)
    assert (again.adc_map, again.adc_colors) == (published.adc_map, published.adc_colors)
    assert app.scene.GetNumberOfNodes() == counts  # publishing again adds no node
    assert np.allclose(ijk_to_ras_of(again.overlay), shifted)
    assert array_of(again.overlay).shape == finer.shape
    assert np.array_equal(array_of(again.overlay), second.overlay)
    assert np.allclose(ijk_to_ras_of(again.adc_map), shifted)
    assert np.allclose(array_of(again.adc_map), second.adc_map, equal_nan=True)

    # An overlay node made empty by the user (the combo box's "Create new") gets a display node.
    empty = app.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "new overlay")
    made = panel.publish(app.scene, second, overlay=empty)
    assert made.overlay is empty and empty.GetDisplayNode().GetColorNode() is published.colors
    assert panel.result_from_table(None) is None
    assert panel.background_volume(None, second) is second.adc_node
    assert panel.background_volume(study.t2, second) is study.t2


def rgb(color) -> tuple:
    return tuple(round(float(c), 4) for c in color)


CLASS_RGB = {name: rgb(rgba[:3]) for _, (name, rgba) in outputs.CLASS_COLORS.items()}


def test_publish_adc_map_centred_on_the_cutoff_and_reused(app):
    study, _ = panel.self_test_study(app.scene, app)
    first = analyze(app.scene, study, Options(adc_cutoff=1.21), app=app)
    published = panel.publish(app.scene, first)
    adc_map, colors = published.adc_map, published.adc_colors
    assert adc_map.GetName() == outputs.ADC_MAP_NAME and adc_map.GetAttribute(panel.ADC_MAP_ATTRIBUTE) == "1"
    assert adc_map.GetAttribute("VertebralMarrow.Units") == "1e-3 mm2/s"
    assert colors.GetAttribute(panel.ADC_COLORS_ATTRIBUTE) == "1" and colors is not published.colors
    assert np.allclose(array_of(adc_map), first.adc_map, equal_nan=True)
    assert np.allclose(ijk_to_ras_of(adc_map), ijk_to_ras_of(study.adc))
    display = adc_map.GetDisplayNode()
    assert display.GetColorNode() is colors and not display.GetAutoWindowLevel()
    # Centred on the cut-off: window 0 .. 2 x cut-off, level = cut-off
    assert (display.GetWindow(), display.GetLevel()) == pytest.approx((2 * 1.21, 1.21))
    # red at 0, yellow at the cut-off (the table's middle), green at twice the cut-off (8-bit colours)
    count = colors.GetNumberOfColors()
    ends = []
    for index in (0, (count - 1) / 2, count - 1):
        lower, upper = [0.0] * 4, [0.0] * 4
        colors.GetColor(int(np.floor(index)), lower)
        colors.GetColor(int(np.ceil(index)), upper)
        ends.append(tuple((a + b) / 2 for a, b in zip(lower[:3], upper[:3])))
    assert ends[0] == pytest.approx(CLASS_RGB["normal-marrow range"], abs=0.01)  # 0: the normal-marrow range
    # just above the normal-marrow range (Koutoulidis 2017: 0.548), red
    just_above = [0.0] * 4
    colors.GetColor(int(np.ceil(0.56 / 2.42 * (count - 1))), just_above)
    assert tuple(just_above[:3]) == pytest.approx(CLASS_RGB["malignant-range"], abs=0.04)
    assert ends[1] == pytest.approx(CLASS_RGB["indeterminate"], abs=0.01)
    assert ends[2] == pytest.approx(CLASS_RGB["benign-range"], abs=0.01)

    # A second run with another cut-off reuses both nodes, recentred, and adds no node.
    second = analyze(app.scene, study, Options(adc_cutoff=1.0), app=app)
    nodes = app.scene.GetNumberOfNodes()
    again = panel.publish(app.scene, second, table=published.table, overlay=published.overlay, adc_map=adc_map)
    assert (again.adc_map, again.adc_colors) == (adc_map, colors)
    assert app.scene.GetNumberOfNodes() == nodes
    assert (display.GetWindow(), display.GetLevel()) == pytest.approx((2.0, 1.0))
    # Without the map node (a new one), the colour table is still found, by its attribute.
    fresh = panel.publish(app.scene, second)
    assert fresh.adc_map is not adc_map and fresh.adc_colors is colors
    # Never written over: the analysed ADC map itself, or a labelmap; a "Create new" node is filled.
    before = np.array(array_of(study.adc))
    safe = panel.publish(app.scene, second, adc_map=study.adc)
    assert safe.adc_map is not study.adc and np.array_equal(array_of(study.adc), before)
    assert study.adc.GetAttribute(panel.ADC_MAP_ATTRIBUTE) is None
    assert panel.publish(app.scene, second, adc_map=published.overlay).adc_map is not published.overlay
    empty = app.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "new ADC map")
    made = panel.publish(app.scene, second, adc_map=empty)
    assert made.adc_map is empty and empty.GetDisplayNode().GetColorNode() is colors
    assert np.allclose(array_of(empty), second.adc_map, equal_nan=True)


def segment_colors(segmentation) -> dict:
    segments = segmentation.GetSegmentation()
    return {segments.GetSegment(sid).GetName(): rgb(segments.GetSegment(sid).GetColor()) for sid in segment_ids(segmentation)}


def test_segments_coloured_by_class_and_restored(app, tmp_path):
    study, _ = panel.self_test_study(app.scene, app)
    segmentation = study.segmentation
    own = {"L2 lesion": (0.2, 0.3, 0.4), "L4 lesion": (0.5, 0.5, 0.9), "L3 normal": (0.7, 0.6, 0.5)}
    ids = {segmentation.GetSegmentation().GetSegment(sid).GetName(): sid for sid in segment_ids(segmentation)}
    for name, color in own.items():
        segmentation.GetSegmentation().GetSegment(ids[name]).SetColor(*color)
    result = analyze(app.scene, study, None, app=app)

    # Not asked: the user's colours stay, nothing is tagged.
    panel.publish(app.scene, result, segmentation=segmentation)
    assert segment_colors(segmentation) == own
    assert all(panel.original_segment_color(segmentation, sid) is None for sid in ids.values())

    # Asked: lesions take their class colour (L2 malignant-range, L4 benign-range), the reference stays.
    published = panel.publish(app.scene, result, segmentation=segmentation, color_segments=True)
    assert segment_colors(segmentation) == {"L2 lesion": CLASS_RGB["malignant-range"],
                                            "L4 lesion": CLASS_RGB["benign-range"], "L3 normal": own["L3 normal"]}
    assert panel.original_segment_color(segmentation, ids["L2 lesion"]) == pytest.approx(own["L2 lesion"])
    assert panel.original_segment_color(segmentation, ids["L3 normal"]) is None
    # A second run keeps the first kept colour (not the class colour it finds).
    panel.publish(app.scene, result, table=published.table, overlay=published.overlay, adc_map=published.adc_map,
                  segmentation=segmentation, color_segments=True)
    assert panel.original_segment_color(segmentation, ids["L4 lesion"]) == pytest.approx(own["L4 lesion"])

    # The kept colours are segment tags: saved with the segmentation, restorable after a reload.
    path = tmp_path / "coloured.seg.nrrd"
    write_node(app.scene, segmentation, path)
    other = new_scene()
    reloaded = load_segmentation(other.scene, other, path)
    assert panel.update_segment_colors(reloaded, None, True) == []          # nothing to colour by: unchanged
    assert segment_colors(reloaded)["L2 lesion"] == pytest.approx(CLASS_RGB["malignant-range"], abs=1e-3)
    assert sorted(panel.update_segment_colors(reloaded, None, False)) == sorted([ids["L2 lesion"], ids["L4 lesion"]])
    assert segment_colors(reloaded) == own   # exact: the tag holds the colour in full

    # A lesion that is no longer coloured by class (now ignored) gets its own colour back.
    panel.set_role(segmentation, ids["L4 lesion"], "ignore")
    ignored = analyze(app.scene, study, None, app=app)
    changed = panel.update_segment_colors(segmentation, ignored, True)
    assert set(changed) == {ids["L4 lesion"], ids["L2 lesion"]}
    assert segment_colors(segmentation)["L4 lesion"] == own["L4 lesion"]
    assert panel.original_segment_color(segmentation, ids["L4 lesion"]) is None
    assert segment_colors(segmentation)["L2 lesion"] == CLASS_RGB["malignant-range"]

    # Unticked: back to the user's colours, unless the user recoloured the segment since.
    panel.set_role(segmentation, ids["L4 lesion"], "lesion")
    panel.update_segment_colors(segmentation, result, True)
    segmentation.GetSegmentation().GetSegment(ids["L4 lesion"]).SetColor(0.9, 0.5, 0.0)
    assert panel.update_segment_colors(segmentation, result, False) == [ids["L2 lesion"]]
    assert segment_colors(segmentation) == {"L2 lesion": own["L2 lesion"], "L4 lesion": (0.9, 0.5, 0.0),
                                            "L3 normal": own["L3 normal"]}
    assert all(panel.original_segment_color(segmentation, sid) is None for sid in ids.values())
    assert panel.update_segment_colors(segmentation, result, False) == []
    assert panel.update_segment_colors(None, result, True) == []

    # Segments renamed or removed since the analysis are not coloured from it.
    segmentation.GetSegmentation().GetSegment(ids["L2 lesion"]).SetName("L2 renamed")
    segmentation.GetSegmentation().RemoveSegment(ids["L4 lesion"])
    assert outputs.segment_class_colors(segmentation, result) == {}
    assert panel.update_segment_colors(segmentation, result, True) == []


def test_differential_html(app):
    study, _ = panel.self_test_study(app.scene, app)
    study.segmentation.GetSegmentation().GetNthSegment(1).SetName("L4 <lesion> & co")
    result = analyze(app.scene, study, None, app=app)
    document = panel.result_from_table(panel.publish(app.scene, result).table)
    text = panel.differential_html(document, "L4 <lesion> & co")
    assert "<h3>L4 &lt;lesion&gt; &amp; co</h3>" in text
    assert DISCLAIMER in text
    candidates = document["segments"]["L4 <lesion> & co"]["differential"]
    labels = [candidate["label"] for candidate in candidates]
    positions = [text.index(f"<b>{label}</b>") for label in labels]
    assert positions == sorted(positions) and sorted(c["entity"] for c in candidates) == sorted(ENTITY_KEYS)
    assert "(favoured)" in text and "%" not in text, "words, never a percentage"
    assert "benign-range (cut-off 1.21)" in text and "for: " in text and "against: " in text
    reference = panel.differential_html(document, "L3 normal")
    assert "no differential" in reference and DISCLAIMER in reference
    assert "press Apply" in panel.differential_html(None, None)
    assert "Choose a lesion" in panel.differential_html(document, None)


def test_export_copy_leaves_the_scene_alone(app, tmp_path):
    study, _ = panel.self_test_study(app.scene, app, dwi=True)
    study.dwi, study.bvalues, _ = panel.dwi_inputs(None, study.dwi, "")
    transform = slicer.vtkMRMLLinearTransformNode()
    app.scene.AddNode(transform)
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 12.5)
    transform.SetMatrixTransformToParent(matrix)
    study.t1.SetAndObserveTransformNodeID(transform.GetID())
    result = analyze(app.scene, study, None, app=app)
    before = (app.scene.GetNumberOfNodes(), app.scene.GetURL())
    vtk.vtkObject.GlobalWarningDisplayOn()   # as in Slicer: the export must not silence the application's VTK
    private, copied, copied_result = panel.export_copy(study, result)
    assert vtk.vtkObject.GetGlobalWarningDisplay() == 1
    vtk.vtkObject.GlobalWarningDisplayOff()
    assert private.scene is not app.scene
    assert copied.segmentation.GetScene() is private.scene
    assert [get_segment_role(copied.segmentation, s) for s in segment_ids(copied.segmentation)] == ["lesion", "lesion", "reference"]
    for original, copy in [(study.t1, copied.t1), (study.t2, copied.t2), (result.adc_node, copied_result.adc_node)] + list(zip(study.dwi, copied.dwi)):
        assert copy.GetScene() is private.scene and copy.GetName() == original.GetName()
        assert np.array_equal(array_of(copy), array_of(original)) and np.allclose(ijk_to_ras_of(copy), ijk_to_ras_of(original))
    moved = vtk.vtkMatrix4x4()
    copied.t1.GetParentTransformNode().GetMatrixTransformToWorld(moved)
    assert moved.GetElement(0, 3) == 12.5 and copied.t2.GetParentTransformNode() is None
    assert copied_result.adc_node.GetAttribute("VertebralMarrow.Units") == "1e-3 mm2/s"
    assert copied_result.rows is result.rows
    assert (app.scene.GetNumberOfNodes(), app.scene.GetURL()) == before

    grid = slicer.vtkMRMLGridTransformNode()
    app.scene.AddNode(grid)
    study.t2.SetAndObserveTransformNodeID(grid.GetID())
    with pytest.raises(InputError, match="harden"):
        panel.export_copy(study, result)


def test_citations_for_the_acknowledgement():
    citations = panel.citations()
    assert any(text.startswith("Kaur A") and "Pol J Radiol 2020" in text for text in citations)
    assert not any("project default" in text for text in citations)


# =============================================================================================
# The module file under the rig (Testing/slicer_rig): Slicer's own ScriptedLoadableModule and
# parameterNodeWrapper from ../shared/slicer-source, slicer.mrmlScene the `app` scene; its
# Logic run headless
# =============================================================================================


@pytest.fixture()
def module(app):
    """VertebralMarrow.py loaded as Slicer loads it, on the `app` scene."""
    sys.path.insert(0, str(ROOT / "Testing"))
    from slicer_rig import install, slicer_source

    source = slicer_source()
    if source is None:
        pytest.skip("../shared/slicer-source (Slicer's Python layer) is absent")
    rig = install(source)
    rig.new_application(headless=app)
    loaded, parent = rig.load_module(MODULE_PY)
    loaded.rig_parent = parent
    yield loaded
    assert rig.errors == [], rig.errors


def test_module_class_metadata(module):
    parent = module.rig_parent
    assert parent.title == "Vertebral Marrow" and parent.categories == ["Quantification"]
    assert DISCLAIMER in parent.helpText
    assert "Kaur A" in parent.acknowledgementText and "Pol J Radiol 2020" in parent.acknowledgementText
    assert parent.contributors


def test_parameter_node_defaults(module):
    params = module.VertebralMarrowLogic().getParameterNode()
    assert (params.cutoff, params.indeterminateBand, params.adcUnits, params.fitMethod) == (1.21, 0.2, "auto", "iwls")
    assert (params.signalLowBelow, params.signalHighAbove, params.bmin, params.bmax) == (0.8, 1.2, 0.0, 0.0)
    assert (params.showOverlay, params.overlayOpacity, params.bvalues, params.dwiVolumes) == (True, 0.5, "", [])
    assert (params.showAdcColorMap, params.adcColorMapOpacity, params.colorSegmentsByClass) == (False, 0.5, False)
    assert (params.minVoxels, params.ctScleroticHu, params.criteriaFile) == (10, 302.0, "")
    assert params.segmentation is None and params.resultsTable is None and params.overlayVolume is None
    assert params.adcMapVolume is None
    with pytest.raises(ValueError):
        params.adcColorMapOpacity = 1.5
    with pytest.raises(ValueError):
        params.cutoff = 9.0
    with pytest.raises(ValueError):
        params.adcUnits = "mm2"
    with pytest.raises(ValueError):
        params.minVoxels = 0
    with pytest.raises(ValueError):
        params.ctScleroticHu = 5000.0
    assert set(module.VertebralMarrowParameterNode.allParameters) == set(parameter_fields())


def run_logic(module, app, **inputs):
    study, expected = panel.self_test_study(app.scene, app)
    logic = module.VertebralMarrowLogic()
    params = logic.getParameterNode()
    params.segmentation, params.adcVolume = study.segmentation, study.adc
    params.t1Volume, params.t2Volume, params.fsVolume = study.t1, study.t2, study.fs
    for name, value in inputs.items():
        setattr(params, name, value)
    return study, expected, logic, params


def test_logic_process_publishes_and_shows_the_overlay(module, app):
    composite = app.scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    study, expected, logic, params = run_logic(module, app)
    steps = []
    result = logic.process(params, progress=lambda fraction, text: steps.append(fraction))
    assert steps[-1] == 1.0 and steps == sorted(steps)
    table, overlay = params.resultsTable, params.overlayVolume
    assert table.GetNumberOfRows() == 3 and table.GetNumberOfColumns() == 20
    document = panel.result_from_table(table)
    assert [(r["segment"], r["adc_class"]) for r in document["rows"]] == [
        ("L2 lesion", "malignant"), ("L4 lesion", "benign"), ("L3 normal", "reference")]
    values, counts = np.unique(slicer.util.arrayFromVolume(overlay), return_counts=True)
    assert dict(zip(values.tolist(), counts.tolist())) == expected["overlay_counts"]
    assert overlay.GetDisplayNode().GetColorNode().GetColorName(1) == "benign-range"
    assert composite.GetBackgroundVolumeID() == study.adc.GetID()
    assert composite.GetLabelVolumeID() == overlay.GetID() and composite.GetLabelOpacity() == 0.5
    assert logic.lastResult is result

    params.showOverlay = False
    logic.updateOverlayDisplay(params)
    assert composite.GetLabelVolumeID() is None
    params.showOverlay, params.overlayOpacity = True, 0.8
    logic.updateOverlayDisplay(params)
    assert composite.GetLabelVolumeID() == overlay.GetID() and composite.GetLabelOpacity() == pytest.approx(0.8)

    params.displayVolume = study.t2
    logic.process(params)
    assert (params.resultsTable, params.overlayVolume) == (table, overlay)
    assert composite.GetBackgroundVolumeID() == study.t2.GetID()
    assert app.scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 1
    assert app.scene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode") == 1

    with pytest.raises(module.analysis.Cancelled):
        logic.process(params, cancelled=lambda: True)
    logic.forgetResult()
    assert logic.lastResult is None


def test_logic_shows_the_adc_map_and_colours_segments_on_request(module, app):
    composite = app.scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    study, _, logic, params = run_logic(module, app, cutoff=1.0, indeterminateBand=0.0)
    segments = study.segmentation.GetSegmentation()
    ids = {segments.GetSegment(sid).GetName(): sid for sid in segment_ids(study.segmentation)}
    own = segment_colors(study.segmentation)
    logic.process(params)
    adc_map = params.adcMapVolume
    assert adc_map is not None and adc_map.GetAttribute(panel.ADC_MAP_ATTRIBUTE) == "1"
    display = adc_map.GetDisplayNode()
    assert (display.GetWindow(), display.GetLevel()) == pytest.approx((2.0, 1.0))
    assert composite.GetForegroundVolumeID() is None          # off by default
    assert segment_colors(study.segmentation) == own            # not asked: the user's colours

    params.showAdcColorMap, params.adcColorMapOpacity = True, 0.7
    logic.updateOverlayDisplay(params)
    assert composite.GetForegroundVolumeID() == adc_map.GetID()
    assert composite.GetForegroundOpacity() == pytest.approx(0.7)
    assert composite.GetLabelVolumeID() == params.overlayVolume.GetID()
    params.showAdcColorMap = False
    logic.updateOverlayDisplay(params)
    assert composite.GetForegroundVolumeID() is None
    # A foreground the user chose is not this map: left alone while the map is off.
    composite.SetForegroundVolumeID(study.t2.GetID())
    params.overlayOpacity = 0.6
    logic.updateOverlayDisplay(params)
    assert composite.GetForegroundVolumeID() == study.t2.GetID() and composite.GetLabelOpacity() == pytest.approx(0.6)

    # Ticking colours the lesions from the last result at once; unticking gives the colours back.
    params.colorSegmentsByClass = True
    logic.updateOverlayDisplay(params)
    assert segment_colors(study.segmentation)["L2 lesion"] == CLASS_RGB["malignant-range"]
    assert segment_colors(study.segmentation)["L4 lesion"] == CLASS_RGB["benign-range"]
    params.colorSegmentsByClass = False
    logic.updateOverlayDisplay(params)
    assert segment_colors(study.segmentation) == own

    # Apply with both on: the same map node (recentred on the new cut-off), shown, lesions coloured.
    params.showAdcColorMap, params.colorSegmentsByClass, params.cutoff = True, True, 1.21
    nodes = app.scene.GetNumberOfNodes()
    logic.process(params)
    assert params.adcMapVolume is adc_map and app.scene.GetNumberOfNodes() == nodes
    assert (display.GetWindow(), display.GetLevel()) == pytest.approx((2.42, 1.21))
    assert composite.GetForegroundVolumeID() == adc_map.GetID()
    assert rgb(panel.original_segment_color(study.segmentation, ids["L2 lesion"])) == own["L2 lesion"]
    assert segment_colors(study.segmentation)["L2 lesion"] == CLASS_RGB["malignant-range"]
    # After a scene close (no last result), unticking still restores, from the segment tags.
    logic.forgetResult()
    params.colorSegmentsByClass = False
    logic.updateOverlayDisplay(params)
    assert segment_colors(study.segmentation) == own


def test_results_table_cells_hold_the_rows(module, app):
    _, _, logic, params = run_logic(module, app)
    result = logic.process(params)
    table = params.resultsTable
    for column in ("role", "adc_class", "t1_signal", "differential"):
        assert [table.GetCellText(r, table.GetColumnIndex(column)) for r in range(3)] == [row[column] for row in result.rows]
    assert slicer.util.arrayFromTableColumn(table, "adc_mean") == pytest.approx([0.8, 1.8, 0.4])


def test_logic_uses_min_voxels_ct_threshold_and_refuses_a_missing_criteria_file(module, app, tmp_path):
    _, _, logic, params = run_logic(module, app, minVoxels=10000)
    result = logic.process(params)
    assert result.options.min_voxels == 10000
    assert any("fewer than 10000" in warning for warning in result.warnings)
    params.minVoxels, params.ctScleroticHu = 10, 500.0
    assert logic.process(params).options.ct_sclerotic_min_hu == 500.0
    nodes = app.scene.GetNumberOfNodes()
    params.criteriaFile = str(tmp_path / "mine.json")
    with pytest.raises(InputError, match="criteria file .* does not exist"):
        logic.process(params)
    assert app.scene.GetNumberOfNodes() == nodes


def test_apply_again_adds_no_node(module, app):
    _, _, logic, params = run_logic(module, app)
    logic.process(params)
    nodes = app.scene.GetNumberOfNodes()
    logic.process(params)
    assert app.scene.GetNumberOfNodes() == nodes


def test_logic_fits_dwi_and_replaces_the_previous_fitted_map(module, app):
    study, expected = panel.self_test_study(app.scene, app, dwi=True)
    logic = module.VertebralMarrowLogic()
    params = logic.getParameterNode()
    params.segmentation, params.dwiVolumes = study.segmentation, list(study.dwi)
    first = logic.process(params)
    assert first.adc_node.GetScene() is app.scene and first.bvalues_used == [0.0, 50.0, 400.0, 800.0]
    rows = {r["segment"]: r["adc_mean"] for r in first.rows}
    assert rows == pytest.approx(expected["adc_mean"], abs=1e-3)
    params.bmin = 50.0
    second = logic.process(params)
    assert second.bvalues_used == [50.0, 400.0, 800.0]
    assert first.adc_node.GetScene() is None and second.adc_node.GetScene() is app.scene
    params.bvalues = "0,50"
    with pytest.raises(InputError, match="4 DWI volumes but 2 b-values"):
        logic.process(params)


def test_logic_export_report_leaves_the_scene_alone(module, app, tmp_path):
    pytest.importorskip("VertebralMarrowLib.outputs.report", reason="report.py (export's report page) is not written yet")
    study, _ = panel.self_test_study(app.scene, app)
    logic = module.VertebralMarrowLogic()
    with pytest.raises(ValueError, match="press Apply"):
        logic.exportReport(tmp_path / "none")
    params = logic.getParameterNode()
    params.segmentation, params.adcVolume, params.t2Volume = study.segmentation, study.adc, study.t2
    logic.process(params)
    before = (app.scene.GetNumberOfNodes(), app.scene.GetURL(), study.adc.GetStorageNode())
    files = logic.exportReport(tmp_path / "report")
    assert (tmp_path / "report" / "results.csv").is_file() and (tmp_path / "report" / "report.html").is_file()
    assert all(Path(f).exists() for f in files)
    assert (app.scene.GetNumberOfNodes(), app.scene.GetURL(), study.adc.GetStorageNode()) == before


# --- which volume is which (slicer_panel/series.py) ----------------------------------------


@pytest.mark.parametrize("name, kind", [
    ("5: ADC", "adc"), ("ep2d_diff_b50_400_800_ADC", "adc"), ("Apparent Diffusion Coefficient (mm2/s)", "adc"),
    ("3: T1_TSE_SAG", "t1"), ("t2_tse_sag", "t2"), ("STIR_COR", "fs"), ("T2 FS sag", "fs"), ("TIRM sag", "fs"),
    ("6: ep2d_diff_b0_50_800", "dwi"), ("DWI b=800", "dwi"), ("CT bone", "ct"), ("localizer", None),
])
def test_series_kind_from_names(name, kind):
    from VertebralMarrowLib.slicer_panel.series import series_kind

    assert series_kind(name) == kind


def test_preselection_takes_unambiguous_names_only(app):
    from VertebralMarrowLib.slicer_panel.series import preselection

    grid = np.eye(4)
    cube = np.ones((4, 4, 4), np.float32)
    adc = volume_from_array(app.scene, cube, grid, "5: ADC")
    t1 = volume_from_array(app.scene, cube, grid, "3: T1_TSE_SAG")
    volume_from_array(app.scene, cube, grid, "4: t2_tse_sag")
    volume_from_array(app.scene, cube, grid, "8: T2_TSE_AX")
    chosen = {"adcVolume": None, "t1Volume": None, "t2Volume": None, "fsVolume": None, "ctVolume": None,
              "dwiSequence": None, "dwiVolumes": []}
    assert preselection(app.scene, chosen) == {"adcVolume": adc, "t1Volume": t1}  # two T2 series: no guess
    assert preselection(app.scene, {**chosen, "t1Volume": adc}) == {"adcVolume": adc}  # the user's choice stays
    assert "adcVolume" not in preselection(app.scene, {**chosen, "dwiVolumes": [t1]})


def test_adc_guard_refuses_another_series_and_anatomical_intensities(app):
    from VertebralMarrowLib.slicer_panel.series import adc_map_problem

    grid = np.eye(4)
    t1 = volume_from_array(app.scene, np.full((4, 4, 4), 400.0, np.float32), grid, "3: T1_TSE_SAG")
    assert "looks like a T1 series" in adc_map_problem(t1)
    bright = volume_from_array(app.scene, np.full((4, 4, 4), 9000, np.int16), grid, "series 9")
    assert "twice the ADC of free water" in adc_map_problem(bright)
    for values in (np.full((4, 4, 4), 1.2, np.float32), np.full((4, 4, 4), 1200, np.int16),
                   np.full((4, 4, 4), 0.0012, np.float32)):
        assert adc_map_problem(volume_from_array(app.scene, values, grid, "5: ADC")) == ""
    negative = volume_from_array(app.scene, np.full((4, 4, 4), -1.0, np.float32), grid, "odd map")
    assert "positive" in adc_map_problem(negative)
    params = parameters(segmentation=object(), adcVolume=t1)
    assert "T1 series" in panel.apply_blocker(params)
    with pytest.raises(InputError, match="T1 series"):
        panel.study_from_parameters(params)


def test_dwi_from_a_multivolume_node_with_frame_labels(app):
    """A MultiVolume node (MultiVolumeImporter: one voxel component per frame, the b-values in
    MultiVolume.FrameLabels) gives one volume per frame with its b-value; frames told apart by
    trigger time are not b-values."""
    import vtk as _vtk

    bvalues = [0.0, 50.0, 800.0]
    adc = 1.1  # 10^-3 mm^2/s
    frames = np.stack([(1000.0 * np.exp(-b * adc / 1000.0)) * np.ones((3, 4, 5), np.float32) for b in bvalues], -1)
    node = slicer.vtkMRMLScalarVolumeNode()
    node.SetName("7: ep2d_diff")
    app.scene.AddNode(node)
    image = _vtk.vtkImageData()
    image.SetDimensions(5, 4, 3)
    image.AllocateScalars(_vtk.VTK_FLOAT, len(bvalues))
    node.SetAndObserveImageData(image)
    from vtk.util.numpy_support import vtk_to_numpy

    vtk_to_numpy(image.GetPointData().GetScalars())[:] = frames.reshape(-1, len(bvalues))
    node.SetAttribute("MultiVolume.FrameLabels", "0,50,800")
    node.SetAttribute("MultiVolume.FrameIdentifyingDICOMTagName", "DiffusionBValue")
    nodes, values, source = panel.dwi_inputs(None, [node], "")
    assert values == bvalues and "multi-volume" in source
    for expanded, b in zip(nodes, bvalues):
        assert array_of(expanded) == pytest.approx(1000.0 * np.exp(-b * adc / 1000.0))
    assert panel.dwi_inputs(None, [node], "")[0][0] is nodes[0]   # expanded once while unchanged
    node.SetAttribute("MultiVolume.FrameIdentifyingDICOMTagName", "TriggerTime")  # a DCE series: one volume
    with pytest.raises(InputError, match="two or more b-values"):
        panel.dwi_inputs(None, [node], "")


def test_every_image_input_of_the_command_line_is_on_the_panel():
    from VertebralMarrowLib.core.sequences import SEQUENCES

    fields, bound = parameter_fields(), bound_widgets()
    for sequence in SEQUENCES:
        assert sequence.parameter in fields, sequence.key
        assert bound[sequence.parameter][0] == "qMRMLNodeComboBox", sequence.key


def test_the_panel_passes_every_setting_to_the_analysis():
    """Each setting of core.criteria.SETTINGS has its panel parameter, and what the panel holds
    is what the analysis gets (the signs' thresholds and the normal-marrow tier included)."""
    from VertebralMarrowLib.core.criteria import SETTINGS

    assert {s.parameter for s in SETTINGS} <= set(parameter_fields())
    chosen = dict(marrowMax=0.6, boneIslandHu=900.0, fatT1Ratio=1.3, fatFractionMin=7.0, chemicalShiftDrop=0.7)
    options = panel.options_from_parameters(parameters(**chosen)).resolved()
    assert (options.marrow_max, options.bone_island_min_hu, options.fat_t1_ratio_min, options.fat_fraction_min_percent,
            options.chemical_shift_drop_below) == tuple(chosen.values())


def test_spine_panel_reference_levels_and_summary_lines():
    """The whole spine's typed reference levels and its summary line, read as a radiologist
    would write and read them."""
    from VertebralMarrowLib.slicer_panel import spine as spine_panel

    assert spine_panel.reference_levels("L3, l4 T12") == ("L3", "L4", "T12")
    assert spine_panel.reference_levels("  ") == ()
    with pytest.raises(InputError, match="'L9' is no vertebra level"):
        spine_panel.reference_levels("L3, L9")

    def result(flags, adc=0.45, lesions=()):
        rows = [{"level": level, "flags": flag, "adc_mean": adc} for level, flag in flags.items()]
        return SimpleNamespace(rows=rows, criteria={"marrow_max": 0.55}, lesions=list(lesions))

    quiet = result({"L1": "", "L2": "", "L3": ""})
    assert spine_panel.spine_summary(quiet) == ("3 vertebrae within the normal-marrow range (<= 0.55 x 10^-3 mm^2/s), "
                                                "no outlier, no height loss.")
    flagged = result({"T12": "above_marrow_range", "L1": "above_marrow_range;outlier", "L2": "height_loss"},
                     lesions=[{"segment": "L1 lesion", "level": "L1", "how": "overlap"}])
    assert spine_panel.spine_summary(flagged) == (
        "2 vertebrae above the normal-marrow range (> 0.55 x 10^-3 mm^2/s): T12, L1 \u2014 diffuse infiltration to "
        "exclude; outlier against this spine: L1; body height loss: L2 \u2014 a compression fracture to exclude; "
        "lesions: L1 lesion at L1.")


def test_followup_summary_line():
    from VertebralMarrowLib.slicer_panel.followup import followup_summary

    def row(segment, status, response):
        return {"segment": segment, "status": status, "response": response}

    rows = [row("A", "matched", "RAC1"), row("B", "matched", "RAC3"), row("C", "matched", "RAC3"),
            row("D", "new", "RAC5"), row("E", "gone", None), row("F", "matched", None)]
    assert followup_summary(rows) == (
        "6 compared. RAC1: A; RAC5: D (new); RAC3 (no change): 2; gone: E; no ADC at one time point: F. "
        "MET-RADS-P categories from the ADC only: the reader weighs the high-b signal and the morphology.")


def test_spine_and_followup_tables_carry_the_files_columns():
    """The panel's spine and follow-up tables have spine.csv's and followup.csv's columns, in
    their order, each with a description (units where there are)."""
    from VertebralMarrowLib.core.followup import FOLLOWUP_COLUMNS
    from VertebralMarrowLib.slicer_panel.followup import FOLLOWUP_TABLE_COLUMNS
    from VertebralMarrowLib.slicer_panel.spine import SPINE_TABLE_COLUMNS
    from VertebralMarrowLib.spine_analysis import SPINE_COLUMNS

    for columns, names in ((SPINE_TABLE_COLUMNS, SPINE_COLUMNS), (FOLLOWUP_TABLE_COLUMNS, FOLLOWUP_COLUMNS)):
        assert tuple(name for name, _, _ in columns) == tuple(names)
        assert all(description for _, _, description in columns)
    units = {name: unit for name, unit, _ in SPINE_TABLE_COLUMNS + FOLLOWUP_TABLE_COLUMNS}
    assert units["adc_mean"] == units["adc_baseline"] == units["adc_change"] == "10^-3 mm^2/s"
    assert units["adc_change_pct"] == "%" and units["height_ratio"] == "ratio"
