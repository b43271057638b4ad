"""nnU-Net trainers shipped with iterseg; this folder is put on ``nnUNet_extTrainer``."""
