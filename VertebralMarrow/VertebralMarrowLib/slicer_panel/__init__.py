"""What the Slicer panel decides, without Qt: parameters to options, segment roles, display
layers, the differential's text and publishing results into the scene. Tested headless."""
