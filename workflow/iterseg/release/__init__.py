"""Stage ``results`` (``workflow/rules/results.smk``): what an iteration ships, whether it is ``latest``.

Modules
-------
iteration  the promote step: manifest, gate, ``latest`` and ``iteration.json`` in one call
manifest   ``results/<dataset>/<date>/manifest.json``: what an iteration learned from
gate       the promotion gate: every fold finished, test Dice within the allowed drop
promote    ``latest``: atomic repointing, promotion in date order, rollback, history, status
publish    finished outputs moved into a results folder, each by one rename
"""

__all__ = [
    "gate",
    "iteration",
    "manifest",
    "promote",
    "publish",
]
