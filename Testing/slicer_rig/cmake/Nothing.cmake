# Intentionally empty: what Slicer_EXTENSION_GENERATE_CONFIG and Slicer_EXTENSION_CPACK include needs a Slicer build.
