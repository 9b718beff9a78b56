# A SlicerConfig of the rig's own, for configuring and building the extension with Slicer's
# real macros (read in place from SLICER_SOURCE: CMake/ and CTK/CMake/) without a Slicer
# build. It sets only the variables those macros read; the launcher does not exist, so the
# registered tests can be listed (ctest -N) but not run.
set(CTK_CMAKE_DIR "${SLICER_SOURCE}/CTK/CMake")
list(APPEND CMAKE_MODULE_PATH "${SLICER_SOURCE}/CMake" "${SLICER_SOURCE}/CTK/CMake")
set(Slicer_USE_PYTHONQT ON)
set(Slicer_VERSION_MAJOR 5)
set(Slicer_VERSION_MINOR 12)
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR "lib/Slicer-5.12/qt-scripted-modules")
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR "lib/Slicer-5.12/qt-scripted-modules")
set(Slicer_CLIMODULES_LIB_DIR "lib/Slicer-5.12/cli-modules")
set(Slicer_QTLOADABLEMODULES_LIB_DIR "lib/Slicer-5.12/qt-loadable-modules")
set(Slicer_PYTHON_MODULE_TEST_TEMPLATES_DIR "${SLICER_SOURCE}/Base/QTCore/Testing/Python")
set(Slicer_LAUNCHER_EXECUTABLE "/nonexistent/Slicer")
set(Slicer_ExternalData_DATA_MANAGEMENT_TARGET SlicerData)
set(PYTHON_EXECUTABLE "${RIG_PYTHON}")
set(PYTHONINTERP_FOUND TRUE)
set(PYTHONLIBS_FOUND TRUE)
set(PYTHON_LIBRARIES "${RIG_PYTHON_LIBRARY}")
set(Slicer_USE_FILE "${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake")
# Extension packaging needs a Slicer build: nothing here.
set(Slicer_EXTENSION_GENERATE_CONFIG "${CMAKE_CURRENT_LIST_DIR}/Nothing.cmake")
set(Slicer_EXTENSION_CPACK "${CMAKE_CURRENT_LIST_DIR}/Nothing.cmake")
set(Slicer_FOUND TRUE)
