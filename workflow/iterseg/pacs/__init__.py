"""The PACS loop over DICOMweb: studies in (QIDO-RS, WADO-RS), predicted SEGs out (STOW-RS).

- :mod:`~iterseg.pacs.settings`: the dataset's ``pacs:`` config as frozen dataclasses;
- :mod:`~iterseg.pacs.client`: a dicomweb-client with our credentials, bounded retries, and
  every failure turned into one :class:`~iterseg.errors.PacsError` line without secrets;
- :mod:`~iterseg.pacs.inventory`: what the PACS holds for the dataset, and what the project
  already has (pulled annotations, its own predicted SEGs);
- :mod:`~iterseg.pacs.pull`: a new dated snapshot (and inbox cases) from it, written whole or not at all;
- :mod:`~iterseg.pacs.push`: an iteration's predicted SEGs to the PACS, once.
"""
