"""VertebralMarrow: quantitative MRI of vertebral bone marrow on Slicer's MRML.

Everything that computes lives here. It imports no Qt and never touches slicer.app,
slicer.mrmlScene or slicer.modules: it takes nodes (or builds a headless scene), so the
same code runs in Slicer, in plain Python and in the `vertebral-marrow` command.
"""

__version__ = "0.1.0"

DISCLAIMER = (
    "Research and decision support only: VertebralMarrow supports, and never replaces, "
    "the radiologist's judgement."
)
