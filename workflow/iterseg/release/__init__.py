"""Stage ``results`` (``workflow/rules/results.smk``): what an iteration ships, whether it is ``latest``.

Modules
-------
manifest  ``results/<dataset>/<date>/manifest.json`` and the promotion gate
promote   ``latest``: atomic repointing, promotion in date order, rollback, history
publish   finished outputs moved into a results folder, each by one rename
"""

__all__ = [
    "manifest",
    "promote",
    "publish",
]
