"""Stage ``convert`` (``workflow/rules/convert.smk``): snapshot -> checked NIfTI -> nnU-Net raw dataset.

Modules
-------
snapshot     one snapshot's conversion, incremental, one bad case skipped (``iterseg convert``)
annotations  which annotation of which image series a snapshot contributes
channels     multi-sequence cases: which series is which nnU-Net channel, all on the reference grid
pair         one image series + its annotation -> NIfTI image and label map
check        the independent check of every label map against its DICOM annotation
nifti        the NIfTI writer
decathlon    an nnU-Net / Decathlon snapshot of NIfTI files instead of DICOM, checked alike
nifti_layout such a snapshot's dataset.json and which of its files form a case
nifti_check  the independent check of its label maps against the snapshot's label files
assemble     an iteration's nnU-Net raw dataset: winners, test set, partial labels (``iterseg assemble``)
"""

__all__ = [
    "annotations",
    "assemble",
    "channels",
    "check",
    "decathlon",
    "nifti",
    "nifti_check",
    "nifti_layout",
    "pair",
    "snapshot",
]
