"""Stages ``plan``, ``train``, ``predict`` (``plan.smk``, ``train.smk``, ``predict.smk``): nnU-Net v2.

Modules
-------
ensemble        the fold ensemble of a trained iteration, as one nnU-Net predictor (predict, evaluate)
env             nnU-Net's environment variables, set per call from our paths
plan            plan once, transfer the first iteration's plans later (``iterseg plan``)
plans_override  configurable overrides of nnU-Net's plans
train           one fold, fine-tuned from the previous iteration (``iterseg train``)
predict         the inbox predicted with the fold ensemble, exported as DICOM-SEGs (``iterseg predict``)
trainers        our nnU-Net trainers (found through ``nnUNet_extTrainer``)
"""

__all__ = [
    "ensemble",
    "env",
    "plan",
    "plans_override",
    "predict",
    "train",
]
