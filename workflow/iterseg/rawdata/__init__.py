"""What users drop into ``data/rawdata/``; only ever read.

Modules
-------
discovery    dated snapshots and the nnU-Net dataset each iteration gets
fingerprint  what a converted snapshot held, file by file (``iterseg reconvert``)
archives     snapshot content as ``.tar``/``.tar.gz``, unpacked safely
inbox        the cases to predict
demo         the synthetic demo dataset (``iterseg demo-data``)
"""

__all__ = [
    "archives",
    "demo",
    "discovery",
    "fingerprint",
    "inbox",
]
