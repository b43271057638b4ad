"""Reading and writing DICOM, shared by conversion and prediction.

Modules
-------
series           image series found by content, headers read, slices in geometric order
geometry         the voxel grid of a sorted series and the checks a SEG export needs
canvas           the grid an annotation is drawn onto and the label map it is drawn into
seg_reader       DICOM-SEG (BINARY, FRACTIONAL, LABELMAP) -> label map
rtstruct_reader  RTSTRUCT -> label map, holes kept
seg_writer       label map or label image file + its series -> DICOM-SEG (``iterseg export-seg``, predict)
codes            coded values of segments (SNOMED CT)
"""

__all__ = [
    "canvas",
    "codes",
    "geometry",
    "rtstruct_reader",
    "seg_reader",
    "seg_writer",
    "series",
]
