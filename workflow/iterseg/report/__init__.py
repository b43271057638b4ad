"""Stage ``report`` (``workflow/rules/report.smk``): pictures and tables for researchers.

Modules
-------
qc        QC pictures of one iteration (``iterseg qc``): a montage per inbox and test case
worklist  which inbox predictions are worth refining next (``iterseg worklist``)
dataset   the dataset report (``iterseg report``): curves and tables over the iterations; what to refine next
montage   one QC overlay montage (PNG): a prediction outlined on its image
curves    learning, effort and training curves (PNG)
"""

__all__ = [
    "curves",
    "dataset",
    "montage",
    "qc",
    "worklist",
]
