"""iterseg: annotated DICOM snapshots -> med-imagetools -> nnU-Net (fine-tuned) -> DICOM-SEG."""

__version__ = "0.1.0"
