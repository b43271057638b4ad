"""Stage ``results`` (``workflow/rules/results.smk``): what an iteration ships, whether it is ``latest``.

Modules
-------
iteration  the promote step: manifest, gate, ``latest`` and ``iteration.json`` in one call
manifest   ``results/<dataset>/<date>/manifest.json``: what an iteration learned from
gate       the promotion gate: every fold finished, test Dice within the allowed drop
promote    ``latest``: atomic repointing, promotion in date order, rollback, history, status
publish    finished outputs moved into a results folder, each by one rename
model_card     the card of an exported model: data, metrics, plans, versions (``iterseg export-model``)
model_archive  a promoted iteration as one zip, and its safe installation (``iterseg install-model``)
installed      an installed model or a promoted iteration as what prediction needs (``--model``)
analyzer       archives in, SEG/NIfTI bytes out, inside a temporary folder (``iterseg.api.analyze``)
"""

__all__ = [
    "analyzer",
    "gate",
    "installed",
    "iteration",
    "manifest",
    "model_archive",
    "model_card",
    "promote",
    "publish",
]
