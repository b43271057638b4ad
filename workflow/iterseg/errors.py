"""Exceptions that carry a message a researcher can act on (what, where, and the fix)."""


class IterSegError(Exception):
    """Base class; the CLI prints its message as one line and exits non-zero."""


class ConfigError(IterSegError):
    """The workflow configuration or an ROI YAML is invalid."""


class SnapshotError(IterSegError):
    """A snapshot folder under rawdata is misnamed, empty or inconsistent."""


class ConversionError(IterSegError):
    """One or more cases could not be converted exactly."""


class DicomReadError(IterSegError):
    """A DICOM series or annotation cannot be read as it must be (slices that cannot be ordered, ...).

    Raised by ``iterseg.dicom``, which conversion, prediction and the SEG export all use: each
    caller turns it into its own stage's error (``ConversionError``, ``PredictionError``,
    ``SegExportError``), the message unchanged.
    """


class PlanTransferError(IterSegError):
    """Plans or weights of an earlier iteration cannot be reused."""


class TrainingError(IterSegError):
    """nnU-Net training did not produce a final checkpoint."""


class PredictionError(IterSegError):
    """An inbox case could not be read, predicted or exported."""


class PromotionError(IterSegError):
    """The ``latest`` link could not be moved."""


class PlanOverrideError(IterSegError):
    """A configured plans override cannot be applied to nnU-Net's plans."""


class EvaluationError(IterSegError):
    """The held-out test set could not be predicted or scored."""


class SegExportError(IterSegError):
    """A label image cannot be written as a correct DICOM-SEG of its reference series."""


class GeometryError(SegExportError, ConversionError):
    """An image series or annotation is not on one regular voxel grid (missing slice, tilt, ...).

    Both export and conversion need the grid, so both kinds of caller catch it.
    """


class PacsError(IterSegError):
    """The PACS cannot be reached, refuses us, or answers something we must not keep."""


class ModelArchiveError(IterSegError):
    """A model archive cannot be exported, checked or installed, or an installed model is incomplete."""


class UsageError(IterSegError):
    """A command's options contradict each other, or one it needs is missing."""


class DicomWriteError(IterSegError):
    """An image cannot be written as the DICOM series asked for (not 3D, invalid identifiers, ...)."""


class AnalysisError(IterSegError):
    """An archive given to the analyzer cannot be unpacked safely, or none of its cases was predicted."""
