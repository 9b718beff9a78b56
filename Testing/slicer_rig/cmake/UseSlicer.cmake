# What Slicer_USE_FILE gives an extension, as far as building a scripted module needs.
include(CTest)
include(ExternalData)
include(ctkFunctionExtractOptimizedLibrary)
include(ctkMacroCompilePythonScript)
include(SlicerMacroConfigureGenericPythonModuleTests)
include(SlicerMacroPythonTesting)
include(SlicerMacroBuildScriptedModule)
