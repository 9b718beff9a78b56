"""Inputs: study files and DICOM folders read into MRML nodes, and Slicer nodes resolved into
the analysis's study (b-values, roles), each checked once at the edge."""
