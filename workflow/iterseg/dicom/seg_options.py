"""How a DICOM-SEG is encoded: the choices a site makes for its viewers and PACS (no heavy imports).

Kept apart from :mod:`iterseg.dicom.seg_writer` so that the config and the PACS push can name
them without importing highdicom (nor pydicom: the CLI's ``--help`` stays instant).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydicom.uid import UID


class SegType(StrEnum):
    """DICOM SegmentationType values the exporter writes."""

    BINARY = "binary"
    LABELMAP = "labelmap"


class SegTransferSyntax(StrEnum):
    """The transfer syntaxes a SEG of ours is written or pushed in (config value -> UID)."""

    #: 1-bit frames of mostly background compress about 20-fold; every DICOM toolkit reads it,
    #: but some PACS and web viewers refuse or mishandle deflate.
    DEFLATED = "deflated"
    #: Uncompressed: what every PACS and viewer accepts.
    EXPLICIT_VR_LITTLE_ENDIAN = "explicit_vr_little_endian"

    @property
    def uid(self) -> UID:
        """The transfer syntax UID written into the file meta."""
        from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

        return {
            SegTransferSyntax.DEFLATED: DeflatedExplicitVRLittleEndian,
            SegTransferSyntax.EXPLICIT_VR_LITTLE_ENDIAN: ExplicitVRLittleEndian,
        }[self]


@dataclass(frozen=True)
class SegOptions:
    """Encoding of the SEG files the workflow writes (``datasets.<name>.seg`` in the config).

    Attributes
    ----------
    transfer_syntax
        Of the files written into results (default deflated); a PACS push re-encodes to its own.
    omit_empty_frames
        Leave out frames with no segmented pixel (smaller files). highdicom's maintainers
        suggest turning it off when a viewer shows a SEG at the wrong position; a SEG without
        any segmented voxel always keeps its frames, since a SEG needs at least one.

    """

    transfer_syntax: SegTransferSyntax = SegTransferSyntax.DEFLATED
    omit_empty_frames: bool = True


DEFAULT_SEG_OPTIONS = SegOptions()  #: deflated files, empty frames left out
