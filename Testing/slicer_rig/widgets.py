"""Stand-ins for the CTK and qMRML widgets, on PySide6 under PythonQt's rules.

Each behaves as its C++ source says where the module depends on it (read from Slicer/Slicer
Libs/MRML/Widgets and commontk/CTK Libs/Widgets):

- qMRMLNodeComboBox (qMRMLNodeComboBox.cxx): lists the scene's nodes of `nodeTypes` (hidden
  ones only with showHidden, filtered by addAttribute), in scene order, after a "None" item
  when noneEnabled. setCurrentNode of a node it does not list selects None (noneEnabled) or
  nothing. When the current node is removed, Qt's combo box moves to the row now at the same
  place (QComboBoxPrivate::_q_rowsRemoved) and emitCurrentNodeChanged turns a row that is no
  node into the last node: the next node, else the last one, else None. The first node added
  to an empty combo box without a None item becomes current (QComboBox::rowsInserted).
  currentNodeChanged(vtkMRMLNode*), currentNodeChanged(bool), currentNodeIDChanged(QString)
  are emitted only when the current node changed.
- qMRMLCheckableNodeComboBox: the same list, each row checkable (the "None" row too when
  noneEnabled: ctkCheckableComboBox makes every row checkable); checkedNodesChanged() on a
  check-state change only: a removed row emits nothing (ctkCheckableComboBox emits
  checkedIndexesChanged from dataChanged only).
- qMRMLTableView: shows a vtkMRMLTableNode (column names as header, one row per table row),
  refreshed when the table node is modified; clicked(QModelIndex) is QAbstractItemView's.
- ctkSliderWidget (ctkSliderWidget.cxx): value clamped to [minimum, maximum] and rounded to
  `decimals`; valueChanged(double) when the value changed (each step of a drag, tracking on).
- ctkCollapsibleButton: `collapsed` hides the contents; contentsCollapsed(bool).
- ctkPathLineEdit: currentPath; currentPathChanged(QString) when it changed.
- qMRMLWidget: setMRMLScene emits mrmlSceneChanged(vtkMRMLScene*).
The other classes exist so the parameter node wrapper's `type(widget) in (...)` tests can
name them; the module does not use them.
"""

from __future__ import annotations

import weakref

import vtk
from PySide6 import QtCore, QtGui, QtWidgets
from PySide6.QtCore import Property, Signal

from .pythonqt import PythonQtObject, register_stand_ins

Qt = QtCore.Qt


def _property(type_name, name, default, on_set=None):
    def getter(self):
        return self.__dict__.get("_p_" + name, default)

    def setter(self, value):
        self.__dict__["_p_" + name] = value
        if on_set is not None:
            on_set(self)

    return Property(type_name, getter, setter)


class qMRMLWidget(PythonQtObject, QtWidgets.QWidget):
    CPP_SIGNALS = frozenset({"mrmlSceneChanged(vtkMRMLScene*)"})
    CPP_SLOTS = frozenset({"setMRMLScene(vtkMRMLScene*)"})
    mrmlSceneChanged = Signal(object)

    def setMRMLScene(self, scene):
        self.__dict__["_scene"] = scene
        self.mrmlSceneChanged.emit(scene)

    def mrmlScene(self):
        return self.__dict__.get("_scene")


class qSlicerWidget(qMRMLWidget):
    pass


class qMRMLNodeComboBox(PythonQtObject, QtWidgets.QWidget):
    CPP_SIGNALS = frozenset({"currentNodeChanged(vtkMRMLNode*)", "currentNodeChanged(bool)",
                             "currentNodeIDChanged(QString)", "nodeAdded(vtkMRMLNode*)",
                             "nodeAboutToBeRemoved(vtkMRMLNode*)", "nodeActivated(vtkMRMLNode*)"})
    CPP_SLOTS = frozenset({"setMRMLScene(vtkMRMLScene*)", "setCurrentNode(vtkMRMLNode*)", "setCurrentNodeID(QString)"})

    currentNodeChanged = Signal((object,), (bool,))
    currentNodeIDChanged = Signal(str)
    nodeAdded = Signal(object)
    nodeAboutToBeRemoved = Signal(object)
    nodeActivated = Signal(object)

    nodeTypes = _property("QStringList", "nodeTypes", [], lambda self: self._refresh())
    showHidden = _property(bool, "showHidden", False, lambda self: self._refresh())
    showChildNodeTypes = _property(bool, "showChildNodeTypes", True, lambda self: self._refresh())
    hideChildNodeTypes = _property("QStringList", "hideChildNodeTypes", [], lambda self: self._refresh())
    noneEnabled = _property(bool, "noneEnabled", False, lambda self: self._refresh())
    addEnabled = _property(bool, "addEnabled", True)
    removeEnabled = _property(bool, "removeEnabled", True)
    editEnabled = _property(bool, "editEnabled", False)
    renameEnabled = _property(bool, "renameEnabled", False)
    baseName = _property("QString", "baseName", "")
    noneDisplay = _property("QString", "noneDisplay", "None")
    selectNodeUponCreation = _property(bool, "selectNodeUponCreation", True)
    interactionNodeSingletonTag = _property("QString", "interactionNodeSingletonTag", "")
    sizeAdjustPolicy = _property(int, "sizeAdjustPolicy", 0)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = None
        self._tags = []
        self._nodes = []        # IDs listed, in scene order
        self._current = None    # ID of the current node
        self._attributes = {}   # nodeType -> (attribute, value)

    # -- what the combo box lists --

    def _accepts(self, node) -> bool:
        types = list(self.nodeTypes or [])
        if not any(node.IsA(t) for t in types):
            return False
        if not self.showChildNodeTypes and node.GetClassName() not in types:
            return False
        if any(node.IsA(t) for t in (self.hideChildNodeTypes or [])):
            return False
        if node.GetHideFromEditors() and not self.showHidden:
            return False
        for node_type, (attribute, value) in self._attributes.items():
            if node.IsA(node_type) and node.GetAttribute(attribute) != value:
                return False
        return True

    def _refresh(self, removing=None):
        scene = self._scene
        nodes = []
        if scene is not None:
            for index in range(scene.GetNumberOfNodes()):
                node = scene.GetNthNode(index)
                if (removing is None or node.GetID() != removing.GetID()) and self._accepts(node):
                    nodes.append(node.GetID())
        self._nodes = nodes

    def setMRMLScene(self, scene):
        if scene is self._scene:
            return
        if self._scene is not None:
            for tag in self._tags:
                self._scene.RemoveObserver(tag)
        self._scene, self._tags = scene, []
        if scene is not None:
            box = weakref.ref(self)  # observers never keep a box alive, nor call one being collected

            def added(caller, event, node):
                if box() is not None:
                    box()._onNodeAdded(node)

            def removing(caller, event, node):
                if box() is not None:
                    box()._onNodeAboutToBeRemoved(node)

            def batch_end(caller, event):
                if box() is not None:
                    box()._onBatchEnd()

            added.CallDataType = removing.CallDataType = vtk.VTK_OBJECT
            self._tags = [scene.AddObserver(scene.NodeAddedEvent, added),
                          scene.AddObserver(scene.NodeAboutToBeRemovedEvent, removing),
                          scene.AddObserver(scene.EndBatchProcessEvent, batch_end)]
        self._refresh()
        if self._current not in self._nodes:
            self._setCurrent(None)
        self.setEnabled(scene is not None)

    def mrmlScene(self):
        return self._scene

    def _node(self, node_id):
        return self._scene.GetNodeByID(node_id) if (self._scene is not None and node_id) else None

    def _setCurrent(self, node_id):
        if node_id == self._current:
            return
        self._current = node_id
        node = self._node(node_id)
        self.currentNodeChanged[object].emit(node)
        self.currentNodeChanged[bool].emit(node is not None)
        self.currentNodeIDChanged.emit(node_id or "")

    def _onNodeAdded(self, node):
        was_empty = not self._nodes and not self.noneEnabled
        self._refresh()
        if node is not None and node.GetID() in self._nodes:
            self.nodeAdded.emit(node)
        if was_empty and self._nodes and self._current is None:
            self._setCurrent(self._nodes[0])

    def _onNodeAboutToBeRemoved(self, node):
        before = list(self._nodes)
        if node is None or node.GetID() not in before:
            return
        self.nodeAboutToBeRemoved.emit(node)
        self._refresh(removing=node)
        if self._current == node.GetID():
            position, remaining = before.index(self._current), self._nodes
            if position < len(remaining):
                self._setCurrent(remaining[position])
            else:
                self._setCurrent(remaining[-1] if remaining else None)

    def _onBatchEnd(self):
        self._refresh()
        if self._current not in self._nodes:
            self._setCurrent(self._nodes[0] if (self._nodes and not self.noneEnabled) else None)

    # -- the API the module and the parameter node wrapper use --

    def currentNode(self):
        return self._node(self._current)

    def currentNodeID(self):
        return self._current or ""

    def setCurrentNode(self, node):
        self._refresh()
        node_id = node.GetID() if node is not None else None
        self._setCurrent(node_id if node_id in self._nodes else None)

    def setCurrentNodeID(self, node_id):
        self.setCurrentNode(self._node(node_id))

    def nodeCount(self):
        return len(self._nodes) if self._scene is not None else 0

    def nodeFromIndex(self, index):
        return self._node(self._nodes[index]) if 0 <= index < len(self._nodes) else None

    def addAttribute(self, nodeType, attributeName, attributeValue=""):
        self._attributes[nodeType] = (attributeName, str(attributeValue))
        self._refresh()

    def removeAttribute(self, nodeType, attributeName):
        self._attributes.pop(nodeType, None)
        self._refresh()


class qMRMLCheckableNodeComboBox(qMRMLNodeComboBox):
    CPP_SIGNALS = qMRMLNodeComboBox.CPP_SIGNALS | {"checkedNodesChanged()"}
    CPP_SLOTS = qMRMLNodeComboBox.CPP_SLOTS | {"check(vtkMRMLNode*)", "uncheck(vtkMRMLNode*)"}
    checkedNodesChanged = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self._checked = []  # IDs, in check order; the "None" row as ""

    def rows(self):
        """The rows the user sees and can tick: "None" first when noneEnabled."""
        return ([""] if self.noneEnabled else []) + list(self._nodes)

    def checkedNodes(self):
        return [self._node(node_id) for node_id in self.rows() if node_id in self._checked]

    def uncheckedNodes(self):
        return [self._node(node_id) for node_id in self._nodes if node_id not in self._checked]

    def checkState(self, node):
        return Qt.Checked if (node.GetID() if node else "") in self._checked else Qt.Unchecked

    def setCheckState(self, node, state):
        node_id = node.GetID() if node else ""
        checked = state == Qt.Checked
        if checked == (node_id in self._checked):
            return
        if checked:
            self._checked.append(node_id)
        else:
            self._checked.remove(node_id)
        self.checkedNodesChanged.emit()

    def check(self, node):
        self.setCheckState(node, Qt.Checked)

    def uncheck(self, node):
        self.setCheckState(node, Qt.Unchecked)

    def _refresh(self, removing=None):
        super()._refresh(removing)
        # a removed row's check state goes with the row, silently
        self.__dict__["_checked"] = [i for i in self.__dict__.get("_checked", []) if i == "" or i in self._nodes]


class qMRMLTableView(PythonQtObject, QtWidgets.QTableView):
    CPP_SIGNALS = frozenset({"mrmlSceneChanged(vtkMRMLScene*)", "selectionChanged()"})
    CPP_SLOTS = frozenset({"setMRMLScene(vtkMRMLScene*)", "setMRMLTableNode(vtkMRMLTableNode*)",
                           "setMRMLTableNode(vtkMRMLNode*)"})
    transposed = _property(bool, "transposed", False)
    firstRowLocked = _property(bool, "firstRowLocked", False)
    firstColumnLocked = _property(bool, "firstColumnLocked", False)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = None
        self._table = None
        self._tag = None
        self._model = QtGui.QStandardItemModel(self)
        self.setModel(self._model)

    def setMRMLScene(self, scene):
        self._scene = scene

    def mrmlScene(self):
        return self._scene

    def setMRMLTableNode(self, node):
        if self._table is not None and self._tag is not None:
            self._table.RemoveObserver(self._tag)
        self._table, self._tag = node, None
        if node is not None:
            view = weakref.ref(self)  # as the combo boxes' observers
            self._tag = node.AddObserver(vtk.vtkCommand.ModifiedEvent,
                                         lambda caller, event: view() is not None and view()._fill())
        self._fill()

    def mrmlTableNode(self):
        return self._table

    def _fill(self):
        model = self._model
        model.clear()
        table = self._table
        if table is None:
            return
        columns = table.GetNumberOfColumns()
        model.setColumnCount(columns)
        model.setHorizontalHeaderLabels([table.GetColumnName(c) for c in range(columns)])
        for row in range(table.GetNumberOfRows()):
            model.appendRow([QtGui.QStandardItem(table.GetCellText(row, c)) for c in range(columns)])

    def tableModel(self):
        return self._model


class ctkCollapsibleButton(PythonQtObject, QtWidgets.QAbstractButton):
    contentsCollapsed = Signal(bool)

    def _setCollapsed(self):
        collapsed = self.__dict__.get("_p_collapsed", False)
        for child in self.findChildren(QtWidgets.QWidget, options=Qt.FindDirectChildrenOnly):
            child.setVisible(not collapsed)
        self.contentsCollapsed.emit(collapsed)

    collapsed = _property(bool, "collapsed", False, _setCollapsed)
    collapsedHeight = _property(int, "collapsedHeight", 14)
    contentsFrameShape = _property(int, "contentsFrameShape", 0)

    def paintEvent(self, event):
        pass


class ctkSliderWidget(PythonQtObject, QtWidgets.QWidget):
    CPP_SIGNALS = frozenset({"valueChanged(double)", "valueIsChanging(double)"})
    valueChanged = Signal(float)
    valueIsChanging = Signal(float)

    def _get_value(self):
        return self.__dict__.get("_value", 0.0)

    def _set_value(self, value):
        self.setValue(value)

    decimals = _property(int, "decimals", 2)
    singleStep = _property(float, "singleStep", 1.0)
    pageStep = _property(float, "pageStep", 10.0)
    minimum = _property(float, "minimum", 0.0, lambda self: self.setValue(self._get_value()))
    maximum = _property(float, "maximum", 99.0, lambda self: self.setValue(self._get_value()))
    tracking = _property(bool, "tracking", True)
    suffix = _property("QString", "suffix", "")
    prefix = _property("QString", "prefix", "")
    value = Property(float, _get_value, _set_value)

    def setValue(self, value):
        value = min(max(float(value), self.minimum), self.maximum)
        value = round(value, self.decimals)
        if value == self.__dict__.get("_value"):
            return
        self.__dict__["_value"] = value
        self.valueChanged.emit(value)

    def setRange(self, minimum, maximum):
        self.__dict__["_p_minimum"], self.__dict__["_p_maximum"] = float(minimum), float(maximum)
        self.setValue(self._get_value())


class ctkPathLineEdit(PythonQtObject, QtWidgets.QWidget):
    CPP_SIGNALS = frozenset({"currentPathChanged(QString)"})
    currentPathChanged = Signal(str)

    def _get_path(self):
        return self.__dict__.get("_path", "")

    def _set_path(self, path):
        self.setCurrentPath(path)

    currentPath = Property("QString", _get_path, _set_path)
    filters = _property(int, "filters", 0)
    nameFilters = _property("QStringList", "nameFilters", [])
    showBrowseButton = _property(bool, "showBrowseButton", True)
    label = _property("QString", "label", "")

    def setCurrentPath(self, path):
        if path == self._get_path():
            return
        self.__dict__["_path"] = path
        self.currentPathChanged.emit(path)


def _plain(name, base=QtWidgets.QWidget):
    return type(name, (PythonQtObject, base), {"__module__": "ctk_or_slicer_stand_in"})


# Named by the parameter node wrapper's GUI connectors; not used by the module.
ctkCheckBox = _plain("ctkCheckBox", QtWidgets.QCheckBox)
ctkCheckablePushButton = _plain("ctkCheckablePushButton", QtWidgets.QPushButton)
ctkDoubleSlider = _plain("ctkDoubleSlider")
ctkDoubleSpinBox = _plain("ctkDoubleSpinBox")
ctkComboBox = _plain("ctkComboBox", QtWidgets.QComboBox)
ctkRangeWidget = _plain("ctkRangeWidget")
ctkDoubleRangeSlider = _plain("ctkDoubleRangeSlider")
ctkDirectoryButton = _plain("ctkDirectoryButton")
ctkColorPickerButton = _plain("ctkColorPickerButton", QtWidgets.QPushButton)
ctkMenuButton = _plain("ctkMenuButton", QtWidgets.QPushButton)
qMRMLSliderWidget = _plain("qMRMLSliderWidget")
qMRMLSpinBox = _plain("qMRMLSpinBox")
qMRMLRangeWidget = _plain("qMRMLRangeWidget")

CTK = [ctkCollapsibleButton, ctkSliderWidget, ctkPathLineEdit, ctkCheckBox, ctkCheckablePushButton, ctkDoubleSlider,
       ctkDoubleSpinBox, ctkComboBox, ctkRangeWidget, ctkDoubleRangeSlider, ctkDirectoryButton, ctkColorPickerButton,
       ctkMenuButton]
QMRML = [qMRMLWidget, qSlicerWidget, qMRMLNodeComboBox, qMRMLCheckableNodeComboBox, qMRMLTableView,
         qMRMLSliderWidget, qMRMLSpinBox, qMRMLRangeWidget]
register_stand_ins(CTK + QMRML)
