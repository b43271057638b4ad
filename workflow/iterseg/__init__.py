"""iterseg: annotated DICOM snapshots -> checked NIfTI -> nnU-Net (fine-tuned) -> DICOM-SEG."""

__version__ = "0.1.0"
