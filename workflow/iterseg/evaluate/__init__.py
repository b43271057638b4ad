"""Stage ``evaluate`` (``workflow/rules/evaluate.smk``): how good the model is, what refining cost.

Modules
-------
metrics      Dice and surface Dice of one case
test_set     an iteration's model on the frozen test set (``iterseg evaluate``)
effort       how much researchers changed a prediction (``iterseg effort``)
uncertainty  how sure the fold ensemble is of a prediction (measured by ``iterseg predict``)
"""

__all__ = [
    "effort",
    "metrics",
    "test_set",
    "uncertainty",
]
