"""Vertebral Marrow: quantitative MRI of vertebral bone marrow in 3D Slicer.

The radiologist's panel (VertebralMarrowWidget), the console API (VertebralMarrowLogic) and
the in-Slicer self-test (VertebralMarrowTest). Everything that computes or decides lives in
VertebralMarrowLib (analysis, outputs, export, and panel for what this panel decides); this
file only binds it to Slicer's application, scene and widgets.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from typing import Annotated, Callable, List, Optional, Union

import qt
import vtk

import slicer
from slicer import (
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLSequenceNode,
    vtkMRMLTableNode,
)
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from VertebralMarrowLib import DISCLAIMER, __version__
from VertebralMarrowLib import analysis
from VertebralMarrowLib.core.criteria import SETTING
from VertebralMarrowLib.errors import InputError
from VertebralMarrowLib.outputs import folder as output_folder
from VertebralMarrowLib.slicer_panel import dicom_out, panel, series
from VertebralMarrowLib.slicer_panel import followup as followup_panel
from VertebralMarrowLib.slicer_panel import spine as spine_panel
from VertebralMarrowLib.spine_analysis import SCHEME_CHOICES, analyze_spine
from VertebralMarrowLib.mrml import HeadlessApp, remove_with_helpers

try:
    from slicer.i18n import tr as _
    from slicer.i18n import translate
except ImportError:  # Slicer releases before translations (5.2, 5.3)
    def _(text):
        return text

    def translate(context, text):
        return text


#
# VertebralMarrow
#


class VertebralMarrow(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Vertebral Marrow")
        # The category in Slicer's own context, as its modules give it, so a translated Slicer
        # shows one "Quantification" category, not two.
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["VertebralMarrow developers"]
        self.parent.helpText = _(
            "Quantitative MRI of vertebral bone marrow lesions: ADC (from the scanner's map or fitted from "
            "multi-b DWI), T1/T2/FS-T2 (STIR) signal relative to normal marrow, CT attenuation, a per-voxel "
            "overlay of the ADC classes (benign-range green, indeterminate yellow, malignant-range red) and a "
            "ranked differential with the reasons for each entity.<br/><br/>"
            "Draw lesion and normal-marrow ROIs as segments, give each segment its role, choose the volumes "
            "and press Apply. Export writes a report folder (CSV, JSON, overlay, snapshots, HTML report and "
            "a scene); Export DICOM, when the ADC map or DWI came from the DICOM module, adds DICOM SEG, SR and "
            "parametric map to Slicer's DICOM database.<br/><br/>"
        ) + "<b>" + _(DISCLAIMER) + "</b><br/>" + _("Version") + f" {__version__}."
        self.parent.acknowledgementText = _(
            "The thresholds and entity values come from the published sources below; numbers marked "
            "'project default' in criteria.json are engineering choices, not published thresholds."
        ) + "<ul>" + "".join(f"<li>{text}</li>" for text in panel.citations()) + "</ul>"


#
# VertebralMarrowParameterNode
#


def _default(name: str):
    """A setting's default (core.criteria.SETTINGS: from criteria.json where it is a clinical number)."""
    return SETTING[name].default_value()


def _dicomDatabase():
    """Slicer's DICOM database (None where the DICOM module is not loaded)."""
    return getattr(slicer, "dicomDatabase", None)


def _within(name: str) -> WithinRange:
    return WithinRange(SETTING[name].low, SETTING[name].high)


def _spineDefault(name: str) -> float:
    """A whole-spine setting's default: criteria.json's spine section, as the command line's."""
    return spine_panel.spine_default(name)


@parameterNodeWrapper
class VertebralMarrowParameterNode:
    """
    The panel's choices, saved with the scene.

    segmentation - lesion, normal-marrow (reference), disc and muscle ROIs; roles are segment tags.
    adcVolume - the scanner's ADC map (units decided from the values unless adcUnits says).
    dwiSequence, dwiVolumes - multi-b DWI to fit the ADC from (a sequence, or one volume per b-value).
    bvalues - b-values (s/mm^2) of the DWI volumes in order, "0,50,400,800"; empty: from the
        sequence's index values or the volume names.
    t1Volume, t2Volume, fsVolume, ctVolume - optional volumes measured in every ROI.
    inPhaseVolume, opposedPhaseVolume, fatFractionVolume - optional chemical-shift pair and fat-fraction
        map (they separate fatty benign marrow from marrow replaced by tumour).
    displayVolume - the slice views' background under the overlay (default: the ADC map).
    cutoff - ADC cut-off, 10^-3 mm^2/s: mean ADC at or below it is malignant-range (Kaur 2020).
    indeterminateBand - means within cut-off +/- band are indeterminate (default 0.2: 1.01-1.41; 0: no band).
    signalLowBelow, signalHighAbove - lesion/reference signal ratios called low / high.
    fitMethod, bmin, bmax - the DWI fit; b-value limits of 0 mean no limit.
    minVoxels - a ROI covering fewer voxels of a volume is reported with a warning (project default).
    ctScleroticHu - lesion mean CT attenuation (HU) at or above it is sclerotic (Ulano 2016: mean - 2 SD).
    marrowMax, boneIslandHu, fatT1Ratio, fatFractionMin, chemicalShiftDrop - the normal-marrow tier's
        top and the thresholds of the signs read before the tier (see VertebralMarrowLib.core.criteria
        SETTINGS for each one's source); set from the Python console, saved with the scene.
    criteriaFile - the user's own criteria file (criteria.json layout); empty: the built-in one. It
        supplies the entity tables, the differential's factors and the references; the numbers
        above come from the panel and override the file's.
    The clinical defaults equal the built-in criteria.json (a static test keeps them so).
    showOverlay, overlayOpacity - the overlay in the slice views (label layer).
    showAdcColorMap, adcColorMapOpacity - the continuous ADC map in the slice views (foreground layer).
    colorSegmentsByClass - lesion segments take their class colour; their own colours are kept
        in a segment tag and come back when this is turned off.
    colorBlindPalette - the overlay in colours told apart with any colour vision (Okabe-Ito).
    resultsTable, overlayVolume, adcMapVolume - the outputs (created by Apply when empty, reused after).
    spineLabels - the vertebra labels TotalSegmentator or TotalSpineSeg made (segmentation or labelmap).
    spineScheme - how they are read: auto (names, else label numbers and positions) or a scheme.
    spineErosionMm, spineReferenceLevels, spineOutlierRobustSd, spineHeightLossBelow - the whole
        spine's settings (spine_analysis.SpineOptions; empty reference levels: the spine's median).
    spineTable, spineOverlay - the whole spine's outputs (created by Analyse spine when empty).
    followupBaseline, followupBaselineFolder - the baseline: a results or spine table in the scene,
        or a result folder on disk; followupTable - the comparison (created by Compare when empty).
    """

    segmentation: vtkMRMLSegmentationNode
    adcVolume: vtkMRMLScalarVolumeNode
    dwiSequence: vtkMRMLSequenceNode
    dwiVolumes: List[vtkMRMLScalarVolumeNode]
    bvalues: str = ""
    t1Volume: vtkMRMLScalarVolumeNode
    t2Volume: vtkMRMLScalarVolumeNode
    fsVolume: vtkMRMLScalarVolumeNode
    ctVolume: vtkMRMLScalarVolumeNode
    inPhaseVolume: vtkMRMLScalarVolumeNode
    opposedPhaseVolume: vtkMRMLScalarVolumeNode
    fatFractionVolume: vtkMRMLScalarVolumeNode
    displayVolume: vtkMRMLScalarVolumeNode
    # The clinical settings: defaults, ranges and choices from the one settings table.
    cutoff: Annotated[float, _within("adc_cutoff")] = _default("adc_cutoff")
    indeterminateBand: Annotated[float, _within("indeterminate_band")] = _default("indeterminate_band")
    adcUnits: Annotated[str, Choice(list(SETTING["adc_units"].choices))] = _default("adc_units")
    signalLowBelow: Annotated[float, _within("signal_low_below")] = _default("signal_low_below")
    signalHighAbove: Annotated[float, _within("signal_high_above")] = _default("signal_high_above")
    fitMethod: Annotated[str, Choice(list(SETTING["fit_method"].choices))] = _default("fit_method")
    bmin: Annotated[float, WithinRange(0.0, 5000.0)] = 0.0  # 0: no limit (the spin box shows 'all')
    bmax: Annotated[float, WithinRange(0.0, 5000.0)] = 0.0
    minVoxels: Annotated[int, _within("min_voxels")] = _default("min_voxels")
    ctScleroticHu: Annotated[float, _within("ct_sclerotic_min_hu")] = _default("ct_sclerotic_min_hu")
    marrowMax: Annotated[float, _within("marrow_max")] = _default("marrow_max")
    boneIslandHu: Annotated[float, _within("bone_island_min_hu")] = _default("bone_island_min_hu")
    fatT1Ratio: Annotated[float, _within("fat_t1_ratio_min")] = _default("fat_t1_ratio_min")
    fatFractionMin: Annotated[float, _within("fat_fraction_min_percent")] = _default("fat_fraction_min_percent")
    chemicalShiftDrop: Annotated[float, _within("chemical_shift_drop_below")] = _default("chemical_shift_drop_below")
    criteriaFile: str = ""
    showOverlay: bool = True
    overlayOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    showAdcColorMap: bool = False
    adcColorMapOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    colorSegmentsByClass: bool = False
    colorBlindPalette: bool = False
    resultsTable: vtkMRMLTableNode
    overlayVolume: vtkMRMLLabelMapVolumeNode
    adcMapVolume: vtkMRMLScalarVolumeNode
    # The whole spine and the follow-up; defaults from criteria.json's spine section.
    spineLabels: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode, None]
    spineScheme: Annotated[str, Choice(list(SCHEME_CHOICES))] = "auto"
    spineErosionMm: Annotated[float, WithinRange(0.0, 15.0)] = _spineDefault("erosion_mm")
    spineReferenceLevels: str = ""
    spineOutlierRobustSd: Annotated[float, WithinRange(1.0, 10.0)] = _spineDefault("outlier_robust_sd")
    spineHeightLossBelow: Annotated[float, WithinRange(0.5, 1.0)] = _spineDefault("height_loss_below")
    spineTable: vtkMRMLTableNode
    spineOverlay: vtkMRMLLabelMapVolumeNode
    followupBaseline: vtkMRMLTableNode
    followupBaselineFolder: str = ""
    followupTable: vtkMRMLTableNode


#
# VertebralMarrowWidget
#


class VertebralMarrowWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent=None) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._observedSegmentation = None
        self._roleRows = []  # (segment id, name) of the rows the roles table shows
        self._lesionNames = []
        self._updatingGui = False
        self._applying = False
        self._shownDifferential = None  # (result document text, lesion) the differential box shows
        self._document = None
        self._busy = False  # Analyse spine or Compare running (progress lets clicks through)
        self._spineMessage = None  # why the last Analyse spine failed, shown until the next run
        self._followupMessage = None

    def setup(self) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.setup(self)

        # Load widget from .ui file (created by Qt Designer).
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/VertebralMarrow.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

        # The .ui connects the top-level widget's mrmlSceneChanged(vtkMRMLScene*) signal to the
        # setMRMLScene(vtkMRMLScene*) slot of every MRML widget.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = VertebralMarrowLogic()

        # These connections ensure that we update parameter node when scene is closed
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        # A loaded scene's parameter node may have been read before the nodes it refers to
        # existed: bind the panel again once the whole scene is in.
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneEndImport)
        # A deleted DWI volume stays in the node list as None (the checkable combo box emits
        # nothing when a row goes): drop it.
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeRemovedEvent, self.onNodeRemoved)

        self.ui.disclaimerLabel.text = _(DISCLAIMER)
        self.ui.plotsNoteLabel.text = _(panel.plots_note()) if panel.plots_note() else ""
        self.ui.plotsNoteLabel.visible = bool(panel.plots_note())
        self.ui.differentialBrowser.setHtml(panel.differential_html(None, None))
        # Only published ADC maps (not the user's own volumes, which Apply would overwrite)
        self.ui.adcMapSelector.addAttribute("vtkMRMLScalarVolumeNode", panel.ADC_MAP_ATTRIBUTE, "1")

        # Buttons and the widgets not bound to the parameter node
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)
        self.ui.exportDicomButton.connect("clicked(bool)", self.onExportDicomButton)
        self.ui.criteriaFileBrowseButton.connect("clicked(bool)", self.onBrowseCriteriaFile)
        self.ui.dwiVolumesSelector.connect("checkedNodesChanged()", self.onDwiVolumesChanged)
        self.ui.lesionComboBox.connect("currentIndexChanged(int)", self.onLesionChanged)
        self.ui.resultsTableView.connect("clicked(QModelIndex)", self.onResultsTableClicked)
        self.ui.analyseSpineButton.connect("clicked(bool)", self.onAnalyseSpineButton)
        self.ui.exportSpineButton.connect("clicked(bool)", self.onExportSpineButton)
        self.ui.keepAsBaselineButton.connect("clicked(bool)", self.onKeepAsBaselineButton)
        self.ui.followupBaselineFolderBrowseButton.connect("clicked(bool)", self.onBrowseBaselineFolder)
        self.ui.compareButton.connect("clicked(bool)", self.onCompareButton)
        self.ui.exportFollowupButton.connect("clicked(bool)", self.onExportFollowupButton)

        # Make sure parameter node is initialized (needed for module reload)
        self.initializeParameterNode()

    def onReload(self) -> None:
        """Slicer's Reload re-reads this file only: drop the VertebralMarrowLib package too, so
        the reloaded module imports the package's edited files."""
        for name in [name for name in sys.modules if name.split(".")[0] == "VertebralMarrowLib"]:
            del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        # Make sure parameter node exists and observed
        self.initializeParameterNode()

    def exit(self) -> None:
        """Called each time the user opens a different module."""
        # Do not react to parameter node changes (GUI will be updated when the user enters into the module)
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        """Called just before the scene is closed."""
        # Parameter node will be reset, do not use it anymore
        self.setParameterNode(None)
        self.logic.forgetResult()
        self._spineMessage = self._followupMessage = None
        self._observeSegmentation(None)  # nor keep the closed scene's segmentation alive

    def onSceneEndClose(self, caller, event) -> None:
        """Called just after the scene is closed."""
        # If this module is shown while the scene is closed then recreate a new parameter node immediately
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onSceneEndImport(self, caller, event) -> None:
        """Called after a scene was loaded or imported: a new wrapper reads every reference."""
        if self.parent.isEntered:
            self.setParameterNode(None)
            self.initializeParameterNode()

    def onNodeRemoved(self, caller, event) -> None:
        if self._parameterNode is None or slicer.mrmlScene.IsClosing() or slicer.mrmlScene.IsImporting():
            return
        # read through a new wrapper: the panel's cached one may not have seen the change yet
        volumes = list(self.logic.getParameterNode().dwiVolumes)
        if None in volumes:
            self._parameterNode.dwiVolumes = [node for node in volumes if node is not None]

    def initializeParameterNode(self) -> None:
        """Ensure parameter node exists and observed."""
        # Parameter node stores all user choices in parameter values, node selections, etc.
        # so that when the scene is saved and reloaded, these settings are restored.
        self.setParameterNode(self.logic.getParameterNode())

        # Select a segmentation if nothing is selected yet to save a click
        if not self._parameterNode.segmentation:
            firstSegmentationNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
            if firstSegmentationNode:
                self._parameterNode.segmentation = firstSegmentationNode
        # and the volumes whose series descriptions say what they are (the user can change them)
        parameters = self._parameterNode
        chosen = {name: getattr(parameters, name) for name in
                  ("adcVolume", "dwiSequence", "dwiVolumes", "t1Volume", "t2Volume", "fsVolume", "ctVolume")}
        proposals = series.preselection(slicer.mrmlScene, chosen, _dicomDatabase())
        if proposals:
            with slicer.util.NodeModify(parameters.parameterNode):
                for name, node in proposals.items():
                    setattr(parameters, name, node)

    def setParameterNode(self, inputParameterNode: Optional[VertebralMarrowParameterNode]) -> None:
        """
        Set and observe parameter node.
        Observation is needed because when the parameter node is changed then the GUI must be updated immediately.
        """
        if self._parameterNode:
            if self._parameterNodeGuiTag is not None:  # None after exit()
                self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            for method in (self._checkCanApply, self._onParameterNodeModified):
                if self.hasObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, method):
                    self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, method)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Note: in the .ui file, a Qt dynamic property called "SlicerParameterName" is set on each
            # ui element that needs connection.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._checkCanApply()
        self._onParameterNodeModified()

    def _checkCanApply(self, caller=None, event=None) -> None:
        if self._applying:
            return
        blocker = _(panel.apply_blocker(self._parameterNode, _dicomDatabase())) if self._parameterNode else _("No parameter node.")
        if not blocker:
            self.ui.applyButton.toolTip = _("Measure every ROI, classify the lesions and rank their differential")
            self.ui.applyButton.enabled = True
        else:
            self.ui.applyButton.toolTip = blocker
            self.ui.applyButton.enabled = False

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        """Update the parts of the panel the parameter node does not bind by itself."""
        if self._updatingGui:
            return
        self._updatingGui = True
        try:
            self._updateDwiVolumesSelector()
            self.ui.dwiSummaryLabel.text = panel.dwi_summary(self._parameterNode) if self._parameterNode else ""
            self._updateRolesTable()
            self._updateResults()
            self._updateSpine()
            self._updateFollowup()
            self.logic.updateOverlayDisplay(self._parameterNode)
        finally:
            self._updatingGui = False

    # --- DWI volumes (a node list: no parameter node connector, kept in step here) ---

    def _updateDwiVolumesSelector(self) -> None:
        selector = self.ui.dwiVolumesSelector
        wanted = set(node.GetID() for node in (self._parameterNode.dwiVolumes if self._parameterNode else []) if node)
        if set(node.GetID() for node in selector.checkedNodes()) == wanted:
            return
        wasBlocked = selector.blockSignals(True)
        for index in range(selector.nodeCount()):
            node = selector.nodeFromIndex(index)
            selector.setCheckState(node, qt.Qt.Checked if node.GetID() in wanted else qt.Qt.Unchecked)
        selector.blockSignals(wasBlocked)

    def onDwiVolumesChanged(self) -> None:
        if self._parameterNode is None or self._updatingGui:
            return
        self._parameterNode.dwiVolumes = list(self.ui.dwiVolumesSelector.checkedNodes())

    # --- segment roles ---

    def _observeSegmentation(self, segmentationNode) -> None:
        if segmentationNode is self._observedSegmentation:
            return
        events = (slicer.vtkSegmentation.SegmentAdded, slicer.vtkSegmentation.SegmentRemoved,
                  slicer.vtkSegmentation.SegmentModified)
        if self._observedSegmentation is not None:
            for event in events:
                self.removeObserver(self._observedSegmentation, event, self._onSegmentsModified)
        self._observedSegmentation = segmentationNode
        if segmentationNode is not None:
            for event in events:
                self.addObserver(segmentationNode, event, self._onSegmentsModified)

    def _onSegmentsModified(self, caller=None, event=None) -> None:
        self._updateRolesTable()
        self._checkCanApply()

    def _updateRolesTable(self) -> None:
        segmentationNode = self._parameterNode.segmentation if self._parameterNode else None
        self._observeSegmentation(segmentationNode)
        rows = panel.segment_role_rows(segmentationNode)
        table = self.ui.segmentRolesTable
        shown = [(segmentId, name) for segmentId, name, _role in rows]
        if shown != self._roleRows:
            table.setRowCount(len(rows))
            for rowIndex, (segmentId, name, role) in enumerate(rows):
                item = qt.QTableWidgetItem(name)
                item.setFlags(qt.Qt.ItemIsEnabled | qt.Qt.ItemIsSelectable)
                table.setItem(rowIndex, 0, item)
                combo = qt.QComboBox()
                combo.addItems(list(panel.ROLE_CHOICES))
                combo.toolTip = _("lesion: measured and classified; reference: normal marrow the signal ratios are "
                                  "divided by; disc, muscle: T1 internal standards; ignore: not measured")
                combo.setCurrentIndex(panel.ROLE_CHOICES.index(role))
                combo.connect("currentIndexChanged(int)",
                              lambda index, segmentId=segmentId: self.onRoleChanged(segmentId, panel.ROLE_CHOICES[index]))
                table.setCellWidget(rowIndex, 1, combo)
                levels = qt.QSpinBox()
                levels.setRange(0, 25)
                levels.specialValueText = "?"
                levels.toolTip = _("Vertebral levels the lesion involves (? not recorded): spondylitis over three or "
                                   "more levels suggests tuberculosis")
                levels.connect("valueChanged(int)", lambda value, segmentId=segmentId: self.onSpreadChanged(segmentId))
                table.setCellWidget(rowIndex, 2, levels)
                disc = qt.QComboBox()
                disc.addItems([_("?"), _("destroyed"), _("spared")])
                disc.toolTip = _("The adjacent disc: destroyed suggests pyogenic, spared tuberculous spondylitis")
                disc.connect("currentIndexChanged(int)", lambda index, segmentId=segmentId: self.onSpreadChanged(segmentId))
                table.setCellWidget(rowIndex, 3, disc)
            self._roleRows = shown
        for rowIndex, (segmentId, _name, role) in enumerate(rows):
            self._showSpread(rowIndex, segmentationNode, segmentId)
            combo = table.cellWidget(rowIndex, 1)
            if combo is not None and combo.currentIndex != panel.ROLE_CHOICES.index(role):
                wasBlocked = combo.blockSignals(True)
                combo.setCurrentIndex(panel.ROLE_CHOICES.index(role))
                combo.blockSignals(wasBlocked)

    def _showSpread(self, rowIndex: int, segmentationNode, segmentId: str) -> None:
        levels, disc = panel.segment_spread(segmentationNode, segmentId)
        table = self.ui.segmentRolesTable
        for column, value, current in ((2, levels, "value"), (3, panel.DISC_CHOICES.index(disc), "currentIndex")):
            widget = table.cellWidget(rowIndex, column)
            if widget is not None and getattr(widget, current) != value:
                wasBlocked = widget.blockSignals(True)
                setattr(widget, current, value)
                widget.blockSignals(wasBlocked)

    def onSpreadChanged(self, segmentId: str) -> None:
        if self._parameterNode is None or self._parameterNode.segmentation is None:
            return
        rowIndex = [row for row, (sid, _name) in enumerate(self._roleRows) if sid == segmentId][0]
        table = self.ui.segmentRolesTable
        panel.set_spread(self._parameterNode.segmentation, segmentId, table.cellWidget(rowIndex, 2).value,
                         panel.DISC_CHOICES[table.cellWidget(rowIndex, 3).currentIndex])

    def onRoleChanged(self, segmentId: str, role: str) -> None:
        if self._parameterNode is None or self._parameterNode.segmentation is None:
            return
        panel.set_role(self._parameterNode.segmentation, segmentId, role)

    # --- results ---

    def _updateResults(self) -> None:
        table = self._parameterNode.resultsTable if self._parameterNode else None
        shown = self.ui.resultsTableView.mrmlTableNode()
        if (shown.GetID() if shown else None) != (table.GetID() if table else None):
            self.ui.resultsTableView.setMRMLTableNode(table)
        self._showUnitsInHeaders(table)
        text = table.GetAttribute(panel.DOCUMENT_ATTRIBUTE) if table is not None else None
        if self._shownDifferential is None or text != self._shownDifferential[0]:
            self._document = panel.result_from_table(table)
        document = self._document
        names = panel.lesion_names(document)
        combo = self.ui.lesionComboBox
        if names != self._lesionNames:
            current = combo.currentText
            wasBlocked = combo.blockSignals(True)
            combo.clear()
            combo.addItems(names)
            if current in names:
                combo.setCurrentIndex(names.index(current))
            combo.blockSignals(wasBlocked)
            self._lesionNames = names
        # Only when the result or the lesion changed: setHtml re-parses and resets the scroll.
        shown = (text, combo.currentText or None)
        if shown != self._shownDifferential:
            self.ui.differentialBrowser.setHtml(panel.differential_html(document, combo.currentText or None))
            self._shownDifferential = shown
        self.ui.exportButton.enabled = self.logic.lastResult is not None
        blocker = self.logic.dicomExportBlocker()
        self.ui.exportDicomButton.enabled = not blocker
        self.ui.exportDicomButton.toolTip = _(blocker) if blocker else _(
            "Write the last analysis as DICOM SEG (the ROIs), SR (the measurements, TID 1500) and parametric "
            "map (the ADC) on the series the ADC came from, and add them to Slicer's DICOM database")

    def _showUnitsInHeaders(self, table, view=None) -> None:
        """Units in the results' column headers (the view shows bare names; it rebuilds its
        headers when the table changes, so this runs after every update)."""
        model = (view or self.ui.resultsTableView).tableModel()
        for column, text in enumerate(panel.column_headers(table)):
            if model is not None and column < model.columnCount() and model.headerData(column, qt.Qt.Horizontal) != text:
                model.setHeaderData(column, qt.Qt.Horizontal, text)

    def onLesionChanged(self, index: int) -> None:
        self._updateResults()

    def onResultsTableClicked(self, modelIndex) -> None:
        """Centre the slice views on the segment of the clicked row (column 0 is the segment
        name) and show its differential."""
        segment = modelIndex.sibling(modelIndex.row(), 0).data()
        center = panel.lesion_center_ras(self._parameterNode.segmentation if self._parameterNode else None, segment)
        if center is not None:
            slicer.vtkMRMLSliceNode.JumpAllSlices(slicer.mrmlScene, *center, slicer.vtkMRMLSliceNode.CenteredJumpSlice)
        if segment in self._lesionNames:
            self.ui.lesionComboBox.setCurrentIndex(self._lesionNames.index(segment))

    # --- actions ---

    def onApplyButton(self) -> None:
        """Run processing when user clicks "Apply" button."""
        # processEvents() in the progress callback lets clicks through: no second run inside this one
        if self._applying:
            return
        self._applying = True
        self.ui.applyButton.enabled = False
        try:
            self._apply()
        finally:
            self._applying = False
            self._checkCanApply()

    def _apply(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to compute results."), waitCursor=True):
            self._withProgress(_("Starting the analysis"), _("Analysis cancelled."),
                               lambda progress, cancelled: self.logic.process(self._parameterNode, progress=progress,
                                                                              cancelled=cancelled))
            self._onParameterNodeModified()

    @staticmethod
    def _withProgress(startText: str, cancelledText: str, run) -> None:
        """run(progress, cancelled) under a modal progress dialog whose Cancel stops it
        (analysis.Cancelled: a status message, not an error)."""
        progressDialog = slicer.util.createProgressDialog(
            windowTitle=_("Vertebral Marrow"), labelText=startText, maximum=100, windowModality=qt.Qt.ApplicationModal)

        def progress(fraction: float, text: str) -> None:
            progressDialog.labelText = text
            progressDialog.value = int(round(100 * fraction))
            slicer.app.processEvents()

        try:
            run(progress, lambda: progressDialog.wasCanceled)
        except analysis.Cancelled:
            slicer.util.showStatusMessage(cancelledText, 3000)
        finally:
            progressDialog.close()

    def onBrowseCriteriaFile(self) -> None:
        """Choose a criteria file of one's own; cancelling keeps the current one."""
        if self._parameterNode is None:
            return
        current = self._parameterNode.criteriaFile
        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(), _("Criteria file (layout of the built-in criteria.json)"),
            os.path.dirname(current) if current else qt.QDir.homePath(), _("JSON files") + " (*.json)")
        if path:
            self._parameterNode.criteriaFile = path

    def onExportButton(self) -> None:
        """Write the report folder of the last analysis into a folder the user chooses."""
        self._exportToChosenFolder(_("Folder for the Vertebral Marrow report"), "report.html", self.logic.exportReport)

    def _exportToChosenFolder(self, title: str, page: str, export) -> None:
        """Ask for a folder, write export(folder) into it and open its `page` in the browser."""
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), title, qt.QDir.homePath())
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to export the report."), waitCursor=True):
            files = export(folder)
            path = os.path.join(folder, page)
            slicer.util.showStatusMessage(_("Report written:") + f" {path}", 5000)
            logging.info(f"Vertebral Marrow: {len(files)} files written in {folder}")
            if os.path.isfile(path):
                qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(path))

    def onExportDicomButton(self) -> None:
        """Write the last analysis as DICOM SEG, SR and parametric map into Slicer's DICOM database."""
        with slicer.util.tryWithErrorDisplay(_("Failed to export DICOM."), waitCursor=True):
            written = self.logic.exportDicom()
            slicer.util.showStatusMessage(_("DICOM SEG, SR and parametric map added to the DICOM database:")
                                          + " " + ", ".join(str(path) for path in written.values()), 5000)

    # --- whole spine and follow-up ---

    def _showTable(self, view, table) -> None:
        shown = view.mrmlTableNode()
        if (shown.GetID() if shown else None) != (table.GetID() if table else None):
            view.setMRMLTableNode(table)
        self._showUnitsInHeaders(table, view)

    def _updateSpine(self) -> None:
        params = self._parameterNode
        blocker = _(spine_panel.spine_blocker(params, _dicomDatabase()))
        line = ""
        if params is not None and params.spineLabels is not None:
            try:
                line = self.logic.spineLabelsLine(params)
            except InputError as error:
                line = _("These labels cannot be read:") + f" {error}"
                blocker = blocker or str(error)
        self.ui.spineLabelsSummaryLabel.text = line
        self.ui.analyseSpineButton.enabled = not blocker and not self._busy
        self.ui.analyseSpineButton.toolTip = blocker or _("Read the marrow of every labelled vertebra")
        table = params.spineTable if params is not None else None
        self._showTable(self.ui.spineTableView, table)
        self.ui.spineSummaryLabel.text = self._spineMessage or spine_panel.spine_table_summary(table) or ""
        self.ui.exportSpineButton.enabled = self.logic.lastSpineResult is not None

    def _updateFollowup(self) -> None:
        params = self._parameterNode
        blocker = _(followup_panel.followup_blocker(params))
        self.ui.compareButton.enabled = not blocker and not self._busy
        self.ui.compareButton.toolTip = blocker or _("Match lesions by segment name and vertebrae by level; ADC "
                                                     "change and the MET-RADS-P category from the ADC")
        table = params.followupTable if params is not None else None
        self._showTable(self.ui.followupTableView, table)
        self.ui.followupSummaryLabel.text = self._followupMessage or followup_panel.followup_table_summary(table) or ""
        self.ui.exportFollowupButton.enabled = self.logic.lastFollowup is not None

    def _runOnce(self, failure: str, action) -> Optional[str]:
        """Run `action` once (progress lets clicks through: no second run inside it). Bad input
        (InputError) is one message, in the panel and a dialog, never a traceback; anything
        else goes to Slicer's error display. The message, or None when it ran."""
        if self._busy:
            return None
        self._busy = True
        message = None
        try:
            with slicer.util.tryWithErrorDisplay(failure, waitCursor=True):
                try:
                    action()
                except InputError as error:
                    message = f"{failure} {error}"
        finally:
            self._busy = False
        if message:
            slicer.util.errorDisplay(message)  # after the wait cursor is gone
        return message

    def onAnalyseSpineButton(self) -> None:
        def analyse():
            self._withProgress(_("Reading the vertebra labels"), _("Whole-spine reading cancelled."),
                               lambda progress, cancelled: self.logic.analyzeSpine(self._parameterNode, progress=progress,
                                                                                   cancelled=cancelled))

        self._spineMessage = None
        self._spineMessage = self._runOnce(_("Cannot analyse the spine:"), analyse)
        self._onParameterNodeModified()

    def onExportSpineButton(self) -> None:
        self._exportToChosenFolder(_("Folder for the whole-spine report"), "spine.html", self.logic.exportSpineReport)

    def onKeepAsBaselineButton(self) -> None:
        self._followupMessage = self._runOnce(_("Cannot keep a baseline:"), lambda: self.logic.keepAsBaseline(self._parameterNode))
        self._onParameterNodeModified()

    def onBrowseBaselineFolder(self) -> None:
        if self._parameterNode is None:
            return
        folder = qt.QFileDialog.getExistingDirectory(
            slicer.util.mainWindow(), _("Baseline result folder (results.json, spine.json)"), qt.QDir.homePath())
        if folder:
            with slicer.util.NodeModify(self._parameterNode.parameterNode):
                self._parameterNode.followupBaselineFolder = folder
                self._parameterNode.followupBaseline = None  # one baseline: the folder now

    def onCompareButton(self) -> None:
        self._followupMessage = None
        self._followupMessage = self._runOnce(_("Cannot compare:"), lambda: self.logic.compareWithBaseline(self._parameterNode))
        self._onParameterNodeModified()

    def onExportFollowupButton(self) -> None:
        self._exportToChosenFolder(_("Folder for the follow-up report"), "followup.html", self.logic.exportFollowupReport)


#
# VertebralMarrowLogic
#


class VertebralMarrowLogic(ScriptedLoadableModuleLogic):
    """The console API: a thin adapter from Slicer's scene and parameter node to
    VertebralMarrowLib.analysis.analyze, publishing and showing its results.

    Example (Slicer's Python console)::

        import VertebralMarrow
        logic = VertebralMarrow.VertebralMarrowLogic()
        params = logic.getParameterNode()
        params.segmentation = getNode("rois")
        params.adcVolume = getNode("adc_scanner")
        params.t1Volume, params.t2Volume, params.fsVolume = getNode("t1"), getNode("t2"), getNode("stir")
        result = logic.process(params)
        for row in result.lesion_rows:
            print(row["segment"], row["adc_mean"], row["adc_class"], row["differential"])
        logic.exportReport("/tmp/vertebral-marrow-report")
        logic.exportDicom()  # inputs loaded from DICOM: SEG, SR and parametric map into the DICOM database
        params.spineLabels = getNode("vertebrae_totalsegmentator")    # the whole spine
        spine = logic.analyzeSpine(params)                            # spine table and tier overlay
        logic.keepAsBaseline(params)      # ... then the follow-up study: process, analyzeSpine
        rows = logic.compareWithBaseline(params)                      # follow-up table
    """

    def __init__(self) -> None:
        """Called when the logic class is instantiated. Can be used for initializing member variables."""
        ScriptedLoadableModuleLogic.__init__(self)
        self.lastStudy = None
        self.lastResult = None
        self._fittedAdcNode = None
        self._shownOverlay = None
        self._shownSegmentColors = None
        self.lastSpineResult = None
        self._spineInputs = None  # (T1, FS) of the last whole-spine reading, for its export
        self._spineLabels = (None, None)  # (labels node, MTime, scheme), its line: the last read
        self.lastFollowup = None

    def getParameterNode(self):
        return VertebralMarrowParameterNode(super().getParameterNode())

    def forgetResult(self) -> None:
        """Drop the last analysis (its nodes go with the scene being closed)."""
        self.lastStudy = self.lastResult = None
        self._fittedAdcNode = None
        self._shownOverlay = None
        self._shownSegmentColors = None
        self.lastSpineResult = self._spineInputs = self.lastFollowup = None
        self._spineLabels = (None, None)

    @staticmethod
    def application() -> HeadlessApp:
        """Slicer's own scene and logics, in the shape the library takes."""
        return HeadlessApp(
            scene=slicer.mrmlScene,
            app_logic=slicer.app.applicationLogic(),
            segmentations_logic=slicer.modules.segmentations.logic(),
        )

    def analyze(self, study: analysis.StudyNodes, options=None,
                progress: Optional[Callable[[float, str], None]] = None,
                cancelled: Optional[Callable[[], bool]] = None) -> analysis.AnalysisResult:
        """Analyse a study given as nodes (VertebralMarrowLib.analysis.StudyNodes) with
        VertebralMarrowLib.criteria.Options; nothing is published or shown."""
        result = analysis.analyze(slicer.mrmlScene, study, options, app=self.application(),
                                  progress=progress, cancelled=cancelled)
        # A fitted ADC map is a new node each run: the previous run's one goes, with its helpers.
        if self._fittedAdcNode is not None and self._fittedAdcNode is not result.adc_node \
                and self._fittedAdcNode.GetScene() is slicer.mrmlScene:
            remove_with_helpers(slicer.mrmlScene, self._fittedAdcNode)
        self._fittedAdcNode = result.adc_node if study.adc is None else None
        self.lastStudy, self.lastResult = study, result
        return result

    def process(self, parameterNode, progress: Optional[Callable[[float, str], None]] = None,
                cancelled: Optional[Callable[[], bool]] = None, showResult: bool = True) -> analysis.AnalysisResult:
        """Analyse the study the parameter node selects, publish the results table, the overlay
        and the continuous ADC map (reusing the parameter node's output nodes), colour the lesion
        segments by class when asked, and show the overlay in the slice views."""
        if parameterNode is None:
            raise ValueError("no parameter node")
        study = panel.study_from_parameters(parameterNode, _dicomDatabase())
        options = panel.options_from_parameters(parameterNode)
        result = self.analyze(study, options, progress=progress, cancelled=cancelled)
        published = panel.publish(slicer.mrmlScene, result, table=parameterNode.resultsTable,
                                  overlay=parameterNode.overlayVolume, adc_map=parameterNode.adcMapVolume,
                                  segmentation=study.segmentation,
                                  color_segments=parameterNode.colorSegmentsByClass)
        parameterNode.resultsTable = published.table
        parameterNode.overlayVolume = published.overlay
        parameterNode.adcMapVolume = published.adc_map
        followup_panel.link_time_point(published.table, parameterNode.spineTable)
        panel.set_overlay_palette(published.colors, parameterNode.colorBlindPalette)
        if showResult:
            self.showResult(parameterNode, result)
        return result

    def showResult(self, parameterNode, result: analysis.AnalysisResult) -> None:
        """The overlay over the display volume (or the ADC map) in every slice view."""
        background = panel.background_volume(parameterNode.displayVolume, result)
        self._shownOverlay = None
        slicer.util.setSliceViewerLayers(background=background, fit=True)
        self.updateOverlayDisplay(parameterNode)

    def updateOverlayDisplay(self, parameterNode) -> None:
        """Show or hide the overlay (label layer) and the continuous ADC map (foreground layer)
        at their opacities, and colour the lesion segments by class or give them back their own
        colours; each only when its choices changed, so the user's own changes stay."""
        if parameterNode is None:
            return
        overlay = parameterNode.overlayVolume
        if overlay is not None and overlay.GetDisplayNode() is not None:
            panel.set_overlay_palette(overlay.GetDisplayNode().GetColorNode(), parameterNode.colorBlindPalette)
        layers = panel.slice_layers(parameterNode, slicer.mrmlScene)
        state = panel.layers_state(layers)
        if layers and state != self._shownOverlay:
            slicer.util.setSliceViewerLayers(**layers)
            self._shownOverlay = state
        segmentation = parameterNode.segmentation
        colorState = (segmentation.GetID() if segmentation else None, bool(parameterNode.colorSegmentsByClass), id(self.lastResult))
        if colorState != self._shownSegmentColors:
            panel.update_segment_colors(segmentation, self.lastResult, parameterNode.colorSegmentsByClass)
            self._shownSegmentColors = colorState

    def exportReport(self, folder, progress: Optional[Callable[[float, str], None]] = None) -> list:
        """Write the report folder of the last analysis (CSV, JSON, overlay, snapshots, HTML
        report, scene) from a private copy, so the user's scene is left as it was."""
        if self.lastResult is None:
            raise ValueError("there is no analysis to export yet: press Apply first")
        app, study, result = panel.export_copy(self.lastStudy, self.lastResult)
        try:
            return output_folder.write_output_folder(app, study, result, folder, progress=progress)
        finally:
            app.scene.Clear(1)

    def dicomExportBlocker(self, database=None) -> str:
        """Why exportDicom cannot run on the last analysis, or ""."""
        database = database if database is not None else _dicomDatabase()
        return dicom_out.export_blocker(self.lastStudy, self.lastResult, database)

    def exportDicom(self, folder=None, database=None) -> dict:
        """Write the last analysis as DICOM SEG, SR (TID 1500) and parametric map (the ADC)
        into `folder` (default: a new folder in Slicer's temporary folder) on the series the ADC
        came from, and add them to `database` (default: Slicer's DICOM database); from a private
        copy, so the user's scene is left as it was. Returns {"seg"|"sr"|"adc_pm": path}."""
        database = database if database is not None else _dicomDatabase()
        blocker = self.dicomExportBlocker(database)
        if blocker:
            raise InputError(blocker)
        folder = folder or tempfile.mkdtemp(prefix="VertebralMarrowDICOM-", dir=slicer.app.temporaryPath)
        app, study, result = panel.export_copy(self.lastStudy, self.lastResult)
        try:
            return dicom_out.export_dicom(study, result, folder, database)
        finally:
            app.scene.Clear(1)

    # --- the whole spine and the follow-up ---

    def spineLabelsLine(self, parameterNode) -> str:
        """The scheme and the vertebrae of the chosen labels, as "Analyse spine" will read them
        (read again only when the labels node or the scheme changed); InputError when they
        cannot be read."""
        node = parameterNode.spineLabels
        segments = node.GetSegmentation().GetMTime() if node.IsA("vtkMRMLSegmentationNode") else 0
        key = (node.GetID(), node.GetMTime(), segments, parameterNode.spineScheme)
        if self._spineLabels[0] != key:
            try:
                labels = spine_panel.labels_from_parameters(slicer.mrmlScene, self.application(), parameterNode)
                self._spineLabels = (key, spine_panel.labels_line(labels, parameterNode.spineScheme))
            except InputError as error:
                self._spineLabels = (key, error)
        if isinstance(self._spineLabels[1], InputError):
            raise self._spineLabels[1]
        return self._spineLabels[1]

    def analyzeSpine(self, parameterNode, progress: Optional[Callable[[float, str], None]] = None,
                     cancelled: Optional[Callable[[], bool]] = None):
        """Read the marrow of every vertebra the chosen labels hold, with the Inputs' ADC map
        or DWI, T1 and FS and the drawn lesions (spine_analysis.analyze_spine, as the spine
        command does); publish the spine table and the tier overlay (reusing the parameter
        node's output nodes) and show the overlay in the slice views. Returns the SpineResult.
        When `cancelled()` turns true it stops (analysis.Cancelled), leaving no node behind."""
        if parameterNode is None:
            raise ValueError("no parameter node")
        inputs = spine_panel.spine_inputs(parameterNode, _dicomDatabase())
        labels = spine_panel.labels_from_parameters(slicer.mrmlScene, self.application(), parameterNode)
        spineOptions = spine_panel.spine_options_from_parameters(parameterNode)
        spine_panel.check_reference_levels(labels, spineOptions.reference_levels)
        result = analyze_spine(slicer.mrmlScene, labels, options=panel.options_from_parameters(parameterNode),
                               spine_options=spineOptions, app=self.application(), progress=progress,
                               cancelled=cancelled, **inputs)
        spine_panel.replace_run_nodes(slicer.mrmlScene, self.lastSpineResult, result,
                                      user_nodes=(parameterNode.adcVolume, *panel.present(parameterNode.dwiVolumes)))
        self.lastSpineResult, self._spineInputs = result, (inputs["t1"], inputs["fs"])
        table, overlay = spine_panel.publish_spine(slicer.mrmlScene, result, parameterNode.spineTable,
                                                   parameterNode.spineOverlay)
        followup_panel.link_time_point(parameterNode.resultsTable, table)
        parameterNode.spineTable, parameterNode.spineOverlay = table, overlay
        background = parameterNode.displayVolume if parameterNode.displayVolume is not None else result.adc_node
        slicer.util.setSliceViewerLayers(background=background, label=overlay,
                                         labelOpacity=float(parameterNode.overlayOpacity), fit=True)
        return result

    def exportSpineReport(self, folder) -> list:
        """Write the spine command's report folder for the last whole-spine reading from a
        private copy, so the user's scene is left as it was."""
        if self.lastSpineResult is None:
            raise ValueError("there is no whole-spine reading to export yet: press Analyse spine first")
        return spine_panel.export_spine(self.lastSpineResult, folder, *self._spineInputs)

    def keepAsBaseline(self, parameterNode) -> None:
        """Make the current results and spine tables the follow-up's baseline (named so) and
        clear the output nodes, so that the next Apply and Analyse spine write new ones."""
        tables = followup_panel.current_tables(parameterNode)
        if not tables:
            raise InputError("there is no result to keep yet: press Apply or Analyse spine first")
        for table in tables:
            if not table.GetName().endswith(" (baseline)"):
                table.SetName(table.GetName() + " (baseline)")
        with slicer.util.NodeModify(parameterNode.parameterNode):
            parameterNode.followupBaseline = tables[0]
            parameterNode.followupBaselineFolder = ""
            parameterNode.resultsTable = parameterNode.overlayVolume = parameterNode.adcMapVolume = None
            parameterNode.spineTable = parameterNode.spineOverlay = None

    def compareWithBaseline(self, parameterNode) -> list:
        """Compare the current result (results and spine tables) with the chosen baseline
        (core.followup.compare with the criteria's ResponseRules, as the followup command),
        publish the follow-up table and return its rows."""
        options = panel.options_from_parameters(parameterNode).resolved()
        rows, before, after, folder = followup_panel.compare_with_baseline(parameterNode, options)
        parameterNode.followupTable = followup_panel.followup_table_node(slicer.mrmlScene, rows, parameterNode.followupTable)
        self.lastFollowup = (rows, options.criteria, before, after, folder)
        return rows

    def exportFollowupReport(self, folder) -> list:
        """Write the followup command's report folder for the last comparison."""
        if self.lastFollowup is None:
            raise ValueError("there is no comparison to export yet: press Compare with baseline first")
        rows, criteria, before, after, baselineFolder = self.lastFollowup
        return followup_panel.export_followup(rows, criteria, folder, before, after, baselineFolder)


#
# VertebralMarrowTest
#


class VertebralMarrowTest(ScriptedLoadableModuleTest):
    """
    Runs the panel's Apply path on a small study built in code (VertebralMarrowLib.panel.
    self_test_study: the same study the test suite analyses outside Slicer) and checks the
    results table, the overlay classes, the roles table and the export.
    Uses ScriptedLoadableModuleTest base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def setUp(self):
        """Do whatever is needed to reset the state - typically a scene clear will be enough."""
        slicer.mrmlScene.Clear()

    def runTest(self):
        """Run as few or as many tests as needed here."""
        self.setUp()
        self.test_VertebralMarrowApplyAdcMap()
        self.setUp()
        self.test_VertebralMarrowApplyDwi()
        self.setUp()
        self.test_VertebralMarrowRolesAndExport()
        self.setUp()
        self.test_VertebralMarrowDwiSequenceFromDicomLoader()
        self.setUp()
        self.test_VertebralMarrowInputsGuardThemselves()

    def _widgetAndParameters(self, dwi=False):
        widget = slicer.util.getModuleWidget("VertebralMarrow")
        widget.initializeParameterNode()
        study, expected = panel.self_test_study(slicer.mrmlScene, VertebralMarrowLogic.application(), dwi=dwi)
        parameters = widget.logic.getParameterNode()
        parameters.segmentation = study.segmentation
        parameters.adcVolume = study.adc
        parameters.dwiVolumes = list(study.dwi)
        parameters.bvalues = ""
        parameters.t1Volume = study.t1
        parameters.t2Volume = study.t2
        parameters.fsVolume = study.fs
        parameters.resultsTable = None
        parameters.overlayVolume = None
        parameters.adcMapVolume = None
        parameters.showAdcColorMap = False
        parameters.colorSegmentsByClass = False
        return widget, parameters, expected

    def _checkResults(self, parameters, expected, rows, places):
        import numpy as np

        table = parameters.resultsTable
        self.assertIsNotNone(table)
        self.assertEqual(table.GetNumberOfRows(), len(rows))
        segments = [table.GetCellText(row, table.GetColumnIndex("segment")) for row in range(table.GetNumberOfRows())]
        self.assertEqual(segments, rows)
        for row, name in enumerate(segments):
            role, adcClass = expected["rows"][name]
            self.assertEqual(table.GetCellText(row, table.GetColumnIndex("role")), role)
            self.assertEqual(table.GetCellText(row, table.GetColumnIndex("adc_class")), adcClass)
            adcMean = float(slicer.util.arrayFromTableColumn(table, "adc_mean")[row])
            self.assertAlmostEqual(adcMean, expected["adc_mean"][name], places=places)
        overlay = parameters.overlayVolume
        self.assertIsNotNone(overlay)
        values, counts = np.unique(slicer.util.arrayFromVolume(overlay), return_counts=True)
        return dict(zip(values.tolist(), counts.tolist()))

    def test_VertebralMarrowApplyAdcMap(self):
        self.delayDisplay("Apply on a scanner-style ADC map with T1, T2 and FS")
        widget, parameters, expected = self._widgetAndParameters()
        self.assertTrue(widget.ui.applyButton.enabled)
        self.assertEqual(widget.ui.segmentRolesTable.rowCount, 3)

        widget.onApplyButton()

        counts = self._checkResults(parameters, expected, ["L2 lesion", "L4 lesion", "L3 normal"], places=4)
        self.assertEqual(counts, expected["overlay_counts"])
        table = parameters.resultsTable
        for name, signals in expected["signals"].items():
            row = [table.GetCellText(r, 0) for r in range(table.GetNumberOfRows())].index(name)
            self.assertEqual(tuple(table.GetCellText(row, table.GetColumnIndex(c)) for c in ("t1_signal", "t2_signal", "fs_signal")), signals)
        differential = table.GetCellText(1, table.GetColumnIndex("differential"))
        self.assertEqual(differential.split(";")[0], expected["first_entity"]["L4 lesion"])

        # The overlay is shown as the label layer of the slice views
        compositeNode = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceCompositeNode()
        self.assertEqual(compositeNode.GetLabelVolumeID(), parameters.overlayVolume.GetID())
        self.assertAlmostEqual(compositeNode.GetLabelOpacity(), parameters.overlayOpacity)
        parameters.showOverlay = False
        self.assertIsNone(compositeNode.GetLabelVolumeID())
        parameters.showOverlay = True

        # The continuous ADC map, centred on the cut-off, as the foreground layer on request
        adcMap = parameters.adcMapVolume
        self.assertIsNotNone(adcMap)
        self.assertAlmostEqual(adcMap.GetDisplayNode().GetLevel(), parameters.cutoff, places=5)
        self.assertAlmostEqual(adcMap.GetDisplayNode().GetWindow(), 2 * parameters.cutoff, places=5)
        self.assertEqual(widget.ui.adcMapSelector.currentNode(), adcMap)
        self.assertIsNone(compositeNode.GetForegroundVolumeID())
        parameters.adcColorMapOpacity = 0.7
        parameters.showAdcColorMap = True
        self.assertEqual(compositeNode.GetForegroundVolumeID(), adcMap.GetID())
        self.assertAlmostEqual(compositeNode.GetForegroundOpacity(), 0.7)
        parameters.showAdcColorMap = False
        self.assertIsNone(compositeNode.GetForegroundVolumeID())

        # Lesion segments coloured by class on request, their own colours back when unticked
        segments = parameters.segmentation.GetSegmentation()
        l2 = segments.GetSegment(segments.GetSegmentIdBySegmentName("L2 lesion"))
        ownColor = tuple(l2.GetColor())
        widget.ui.colorSegmentsByClassCheckBox.checked = True
        self.assertTrue(parameters.colorSegmentsByClass)
        for got, want in zip(l2.GetColor(), panel.CLASS_COLORS[3][1][:3]):  # malignant-range red
            self.assertAlmostEqual(got, want, places=5)
        widget.ui.colorSegmentsByClassCheckBox.checked = False
        for got, want in zip(l2.GetColor(), ownColor):
            self.assertAlmostEqual(got, want, places=5)

        # The differential box shows the chosen lesion's ranking and the disclaimer
        self.assertEqual(widget.ui.lesionComboBox.count, 2)
        widget.ui.lesionComboBox.setCurrentIndex(1)
        text = widget.ui.differentialBrowser.toPlainText()
        self.assertIn("L4 lesion", text)
        self.assertIn("Haemangioma", text)
        self.assertIn(DISCLAIMER, text)

        # A second Apply reuses the output nodes
        outputIds = (parameters.resultsTable.GetID(), parameters.overlayVolume.GetID(), parameters.adcMapVolume.GetID())
        widget.onApplyButton()
        self.assertEqual((parameters.resultsTable.GetID(), parameters.overlayVolume.GetID(),
                          parameters.adcMapVolume.GetID()), outputIds)
        self.delayDisplay("Test passed")

    def test_VertebralMarrowApplyDwi(self):
        self.delayDisplay("Apply on multi-b DWI volumes (b-values from their names)")
        widget, parameters, expected = self._widgetAndParameters(dwi=True)
        self.assertIn("b=800", widget.ui.dwiSummaryLabel.text)
        widget.onApplyButton()
        counts = self._checkResults(parameters, expected, ["L2 lesion", "L4 lesion", "L3 normal"], places=3)
        self.assertEqual(counts, expected["overlay_counts"])
        self.delayDisplay("Test passed")

    def test_VertebralMarrowRolesAndExport(self):
        import shutil
        import tempfile

        import numpy as np
        from VertebralMarrowLib.mrml import get_segment_role

        self.delayDisplay("Segment roles from the panel, then the report folder")
        widget, parameters, expected = self._widgetAndParameters()
        table = widget.ui.segmentRolesTable
        names = [table.item(row, 0).text() for row in range(table.rowCount)]
        self.assertEqual(names, ["L2 lesion", "L4 lesion", "L3 normal"])
        combo = table.cellWidget(names.index("L4 lesion"), 1)
        self.assertEqual(combo.currentText, "lesion")
        combo.setCurrentIndex(panel.ROLE_CHOICES.index("ignore"))
        segmentation = parameters.segmentation
        segmentId = segmentation.GetSegmentation().GetSegmentIdBySegmentName("L4 lesion")
        self.assertEqual(get_segment_role(segmentation, segmentId), "ignore")

        widget.onApplyButton()
        counts = self._checkResults(parameters, expected, ["L2 lesion", "L3 normal"], places=4)
        self.assertEqual(counts, {0: 24 ** 3 - 216, 3: 216})

        folder = tempfile.mkdtemp(prefix="VertebralMarrowTest")
        try:
            nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
            urlBefore = slicer.mrmlScene.GetURL()
            files = widget.logic.exportReport(folder)
            self.assertTrue(os.path.isfile(os.path.join(folder, "results.csv")))
            self.assertTrue(os.path.isfile(os.path.join(folder, "report.html")))
            self.assertTrue(all(os.path.exists(str(path)) for path in files))
            self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)
            self.assertEqual(slicer.mrmlScene.GetURL(), urlBefore)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self.assertTrue(np.isfinite(float(slicer.util.arrayFromTableColumn(parameters.resultsTable, "adc_mean")[0])))
        self.delayDisplay("Test passed")

    def test_VertebralMarrowDwiSequenceFromDicomLoader(self):
        """A volume sequence as Slicer's DICOM loader (MultiVolumeImporter) gives it: empty index
        name, b-values in MultiVolume.FrameLabels; they are shown before Apply and used."""
        self.delayDisplay("DWI sequence with MultiVolume.FrameLabels")
        widget, parameters, expected = self._widgetAndParameters(dwi=True)
        sequence = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceNode", "7: ep2d_diff_b0_50_400_800")
        for index, node in enumerate(parameters.dwiVolumes):
            sequence.SetDataNodeAtValue(node, str(index))
        sequence.SetAttribute("MultiVolume.FrameLabels", ",".join(f"{b:g}" for b in panel.SELF_TEST_BVALUES))
        sequence.SetAttribute("MultiVolume.FrameIdentifyingDICOMTagName", "DiffusionBValue")
        for node in list(parameters.dwiVolumes):
            slicer.mrmlScene.RemoveNode(node)
        parameters.dwiSequence = sequence
        self.assertEqual(list(parameters.dwiVolumes), [])
        self.assertIn("b=800", widget.ui.dwiSummaryLabel.text)
        self.assertIn("index values of sequence", widget.ui.dwiSummaryLabel.text)
        self.assertTrue(widget.ui.applyButton.enabled)
        widget.onApplyButton()
        self._checkResults(parameters, expected, ["L2 lesion", "L4 lesion", "L3 normal"], places=3)
        self.delayDisplay("Test passed")

    def test_VertebralMarrowInputsGuardThemselves(self):
        """A T1 picked as the ADC map is refused, saying why; selectors are preselected from names."""
        self.delayDisplay("Inputs that guard themselves")
        widget, parameters, expected = self._widgetAndParameters()
        parameters.adcVolume = parameters.t1Volume
        self.assertFalse(widget.ui.applyButton.enabled)
        self.assertIn("looks like a T1 series", widget.ui.applyButton.toolTip)
        from VertebralMarrowLib.errors import InputError

        with self.assertRaisesRegex(InputError, "T1 series"):
            widget.logic.process(parameters)

        slicer.mrmlScene.Clear()
        study, expected = panel.self_test_study(slicer.mrmlScene, VertebralMarrowLogic.application())
        widget.initializeParameterNode()
        parameters = widget.logic.getParameterNode()
        self.assertEqual(parameters.segmentation, study.segmentation)
        self.assertEqual((parameters.adcVolume, parameters.t1Volume, parameters.t2Volume, parameters.fsVolume),
                         (study.adc, study.t1, study.t2, study.fs))
        self.assertTrue(widget.ui.applyButton.enabled)
        self.delayDisplay("Test passed")
