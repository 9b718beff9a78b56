"""PySide6 under PythonQt's rules: the `qt` module Slicer's Python code imports.

What PythonQt (Slicer's Qt binding) does and plain PySide6 does not, restated here:

- a Qt property reads and writes as an attribute, and takes precedence over a method of the
  same name (`label.text`, `combo.currentIndex = 2`, `button.enabled = False`);
- `obj.connect("signal(args)", slot)` connects by C++ signature (a signature the object does
  not have is an error), and a signal's arguments are truncated to the slot's arity
  (co_argcount of the function, minus self for a method; see PythonQtSignalTarget::call in
  PythonQt's PythonQtSignalReceiver.cpp); the same for `obj.signal.connect(slot)`;
- an exception raised in a slot is printed and swallowed (the signal's emitter goes on).
  Here it is also recorded in ERRORS, so a test fails on it (see `errors_of_this_test`).

Every QObject class a test reaches through `qt.X` is a subclass of PySide6's class with these
rules (created on first use, once); QUiLoader (qt.QUiLoader) builds .ui files from these
classes and from the CTK/qMRML stand-ins (widgets.py), so `type(widget) == qt.QCheckBox` holds
as it does in Slicer (the parameter node wrapper's GUI connectors test exactly that).
"""

from __future__ import annotations

import ctypes
import re
import sys
import traceback
import types
import xml.etree.ElementTree as ET

from PySide6 import QtCore, QtGui, QtWidgets
from PySide6.QtUiTools import QUiLoader as _PySideUiLoader

# Exceptions raised in slots (and, through sys.excepthook, in VTK observers) since the last
# reset: (where, formatted traceback).
ERRORS: list = []

_VTK_POINTER = re.compile(r"\bvtk\w+\s*\*")


def record_error(where: str, text: str) -> None:
    ERRORS.append((where, text))
    sys.stderr.write(f"[rig] exception in {where}:\n{text}\n")


def python_arity(callable_):
    """The number of signal arguments PythonQt passes to `callable_`, or None for all."""
    function, bound = callable_, False
    if isinstance(function, types.MethodType):
        function, bound = function.__func__, True
    code = getattr(function, "__code__", None)
    if code is None or code.co_flags & 0x04:  # not Python code, or *args: everything
        return None
    return code.co_argcount - (1 if bound else 0)


def _slot(callable_, where):
    """`callable_` as PythonQt calls a slot: arguments truncated to its arity, exceptions
    recorded instead of propagated."""
    arity = python_arity(callable_)

    def slot(*args):
        if arity is not None:
            args = args[:arity]
        try:
            return callable_(*args)
        except Exception:  # PythonQt prints and carries on
            record_error(where, traceback.format_exc())
        return None

    return slot


def _cpp_signature(signature: str) -> str:
    """The signature PySide6's meta-object has for a C++ one: VTK pointers travel as PyObject."""
    return QtCore.QMetaObject.normalizedSignature(_VTK_POINTER.sub("PyObject", signature)).data().decode()


def _owned(result):
    """PySide6 6.12's SignalInstance.emit and .disconnect return True/False without a
    reference of their own; without taking one, True's count drains and the interpreter
    aborts at exit ("deallocating True or False")."""
    if isinstance(result, bool):
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(result))
    return result


class _BoundSignal:
    """`obj.signal` under PythonQt: connect/disconnect with its slot rules, emit as is."""

    def __init__(self, owner, name, instance):
        self._owner, self._name, self._instance = owner, name, instance

    def _connections(self):
        return self._owner.__dict__.setdefault("_rig_slots", {})

    def connect(self, slot):
        wrapper = _slot(slot, f"{type(self._owner).__name__}.{self._name}")
        self._connections().setdefault((self._name, slot), []).append(wrapper)
        return self._instance.connect(wrapper)

    def disconnect(self, slot=None):
        if slot is None:
            self._connections().clear()
            return _owned(self._instance.disconnect())
        wrappers = self._connections().get((self._name, slot)) or []
        if not wrappers:
            raise RuntimeError(f"{self._name}: slot {slot} is not connected")
        return _owned(self._instance.disconnect(wrappers.pop()))

    def emit(self, *args):
        return _owned(self._instance.emit(*args))

    def __getitem__(self, key):
        return _BoundSignal(self._owner, self._name, self._instance[key])


_KIND_CACHE: dict = {}
_OWN: dict = {}
_READING: set = set()


class PythonQtObject:
    """Mixed into every QObject class the rig hands out (see the module docstring)."""

    # C++ signatures a stand-in declares beyond its PySide6 meta-object (widgets.py):
    # {"currentNodeChanged(vtkMRMLNode*)", ...}; Qt's own classes need none.
    CPP_SIGNALS: frozenset = frozenset()
    CPP_SLOTS: frozenset = frozenset()

    def __getattribute__(self, name):
        # This mixin's own members first: PySide's QObject lookup would give its `connect`
        # precedence over ours.
        if name in _OWN:
            return _OWN[name].__get__(self, type(self))
        if name.startswith("_"):
            return super(PythonQtObject, self).__getattribute__(name)
        kind = _attribute_kind(type(self), name, self)
        if kind == "property":
            key = (id(self), name)
            if key in _READING:
                # PySide looking for a Python override of the getter (a virtual such as
                # sizeHint) while the property is read: the C++ method, not the value.
                return super(PythonQtObject, self).__getattribute__(name)
            _READING.add(key)
            try:
                meta = QtCore.QObject.metaObject(self)
                return meta.property(meta.indexOfProperty(name)).read(self)
            finally:
                _READING.discard(key)
        if kind == "name":
            return QtCore.QObject.objectName(self)
        value = super(PythonQtObject, self).__getattribute__(name)
        if isinstance(value, QtCore.SignalInstance):
            return _BoundSignal(self, name, value)
        return value

    def __setattr__(self, name, value):
        if not name.startswith("_") and _attribute_kind(type(self), name, self) == "property":
            meta = QtCore.QObject.metaObject(self)
            if not meta.property(meta.indexOfProperty(name)).write(self, value):
                raise AttributeError(f"{type(self).__name__}.{name}: cannot write {value!r}")
            return
        if not name.startswith("_") and _attribute_kind(type(self), name, self) == "name":
            QtCore.QObject.setObjectName(self, value)
            return
        super(PythonQtObject, self).__setattr__(name, value)

    def connect(self, *args):
        """PythonQt's `obj.connect("signal(args)", slot)`; Qt's static forms pass through."""
        if len(args) == 2 and isinstance(args[0], str):
            signature, slot = args
            self._check_signal(signature)
            return QtCore.QObject.connect(self, QtCore.SIGNAL(_cpp_signature(signature)),
                                          self._slot_for(signature, slot))
        return QtCore.QObject.connect(self, *args)

    def disconnect(self, *args):
        if len(args) == 2 and isinstance(args[0], str):
            signature, slot = args
            wrappers = self.__dict__.get("_rig_slots", {}).get((signature, slot)) or []
            if not wrappers:
                return False
            return QtCore.QObject.disconnect(self, QtCore.SIGNAL(_cpp_signature(signature)), wrappers.pop())
        return QtCore.QObject.disconnect(self, *args)

    def _slot_for(self, signature, slot):
        wrapper = _slot(slot, f"{type(self).__name__}::{signature}")
        self.__dict__.setdefault("_rig_slots", {}).setdefault((signature, slot), []).append(wrapper)
        return wrapper

    def _check_signal(self, signature):
        normalized = QtCore.QMetaObject.normalizedSignature(signature).data().decode()
        if normalized in type(self).CPP_SIGNALS:
            return
        if _VTK_POINTER.search(normalized) is None and QtCore.QObject.metaObject(self).indexOfSignal(normalized) >= 0:
            return
        raise AttributeError(f"{type(self).__name__} has no signal {signature}")

    def exec_(self, *args):
        return self.exec(*args)


_OWN.update({name: member for name, member in vars(PythonQtObject).items()
             if callable(member) and not name.startswith('__')})


def _attribute_kind(cls, name, instance):
    key = (cls, name)
    kind = _KIND_CACHE.get(key)
    if kind is None:
        kind = "plain"
        if not any(name in vars(base) and not _is_pyside_builtin(base) for base in cls.__mro__):
            if QtCore.QObject.metaObject(instance).indexOfProperty(name) >= 0:
                kind = "property"
            elif name == "name":
                kind = "name"
        _KIND_CACHE[key] = kind
    return kind


def _is_pyside_builtin(cls) -> bool:
    return cls.__module__.startswith(("PySide6", "Shiboken"))


_CLASSES: dict = {}


def _path_only(method):
    # PythonQt returns the chosen path; PySide6 returns (path, selected filter).
    return staticmethod(lambda *args, **kwargs: method(*args, **kwargs)[0])


_OVERRIDES = {
    QtWidgets.QFileDialog: {name: _path_only(getattr(QtWidgets.QFileDialog, name))
                            for name in ("getOpenFileName", "getSaveFileName")},
}


def pythonqt_class(base):
    """The PythonQt-ruled subclass of a PySide6 QObject class (one per class)."""
    if base not in _CLASSES:
        _CLASSES[base] = type(base.__name__, (PythonQtObject, base), {"__module__": "qt", **_OVERRIDES.get(base, {})})
    return _CLASSES[base]


class QUiLoader(_PySideUiLoader):
    """QUiLoader building every widget and layout from the rig's classes.

    The .ui's <connections> are made here by C++ signature (a signal or slot the classes do
    not declare is an error, as Qt's warning would be), since the stand-ins carry VTK pointers
    as PyObject in their PySide6 meta-object."""

    _keep = []  # widgets built here stay alive as long as Qt owns them

    def createWidget(self, className, parent=None, name=""):
        cls = resolve(className)
        if cls is None or not issubclass(cls, QtWidgets.QWidget):
            raise RuntimeError(f"QUiLoader: unknown widget class {className}")
        widget = cls(parent)
        widget.setObjectName(name)
        QUiLoader._keep.append(widget)
        return widget

    def createLayout(self, className, parent=None, name=""):
        cls = resolve(className)
        layout = cls(parent) if parent is not None else cls()
        layout.setObjectName(name)
        QUiLoader._keep.append(layout)
        return layout

    def load(self, device, parent=None):
        data = bytes(device.readAll())
        root = ET.fromstring(data)
        connections = root.find("connections")
        if connections is not None:
            root.remove(connections)
        buffer = QtCore.QBuffer()
        buffer.setData(ET.tostring(root))
        buffer.open(QtCore.QIODevice.ReadOnly)
        widget = super().load(buffer, parent)
        if widget is None:
            return None
        for connection in (connections if connections is not None else []):
            sender, signal, receiver, slot = (connection.find(tag).text for tag in ("sender", "signal", "receiver", "slot"))
            source = widget if QtCore.QObject.objectName(widget) == sender else widget.findChild(QtCore.QObject, sender)
            target = widget if QtCore.QObject.objectName(widget) == receiver else widget.findChild(QtCore.QObject, receiver)
            if source is None or target is None:
                raise RuntimeError(f"QUiLoader: connection {sender}.{signal} -> {receiver}.{slot}: no such object")
            normalized = QtCore.QMetaObject.normalizedSignature(slot).data().decode()
            if normalized not in type(target).CPP_SLOTS and QtCore.QObject.metaObject(target).indexOfSlot(normalized) < 0:
                raise RuntimeError(f"QUiLoader: {type(target).__name__} has no slot {slot}")
            source.connect(signal, getattr(target, slot.split("(")[0]))
        return widget


_EXTRA = {"QUiLoader": QUiLoader}
_STAND_INS: dict = {}


def register_stand_ins(classes) -> None:
    """CTK/qMRML stand-ins (widgets.py) the loader may build by class name."""
    for cls in classes:
        _STAND_INS[cls.__name__] = cls


def resolve(name: str):
    """The rig's class for a Qt (or stand-in) class name."""
    if name in _STAND_INS:
        return _STAND_INS[name]
    if name in _EXTRA:
        return _EXTRA[name]
    for module in (QtWidgets, QtCore, QtGui):
        base = getattr(module, name, None)
        if base is not None:
            if isinstance(base, type) and issubclass(base, QtCore.QObject):
                return pythonqt_class(base)
            return base
    return None


class _QtModule(types.ModuleType):
    """`import qt`: PySide6's classes under PythonQt's rules."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = resolve(name)
        if value is None:
            raise AttributeError(f"module 'qt' has no attribute '{name}'")
        return value


def qt_module() -> types.ModuleType:
    return _QtModule("qt", __doc__)
