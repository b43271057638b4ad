"""Stage ``convert`` (``workflow/rules/convert.smk``): snapshot -> checked NIfTI -> nnU-Net raw dataset.

Modules
-------
snapshot     one snapshot's conversion, incremental, one bad case skipped (``iterseg convert``)
annotations  which annotation of which image series a snapshot contributes
pair         one image series + its annotation -> NIfTI image and label map
check        the independent check of every label map against its DICOM annotation
nifti        the NIfTI writer
assemble     an iteration's nnU-Net raw dataset: winners, test set, partial labels (``iterseg assemble``)
"""

__all__ = [
    "annotations",
    "assemble",
    "check",
    "nifti",
    "pair",
    "snapshot",
]
