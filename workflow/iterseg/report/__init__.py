"""Stage ``report`` (``workflow/rules/report.smk``): pictures and tables for researchers.

Modules
-------
pages    QC per iteration and the dataset report (``iterseg qc``, ``iterseg report``)
montage  QC overlay montages (PNG)
curves   learning, effort and training curves
"""

__all__ = [
    "curves",
    "montage",
    "pages",
]
