"""The numeric core: plain functions over numpy arrays, units in their names and docstrings.

ADC fit and units, ROI statistics, the one ADC class rule, the differential, the criteria and
cohort statistics. Nothing here imports vtk, slicer or Qt, so it runs (and is tested) anywhere.
"""
