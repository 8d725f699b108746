"""Training (torch): model, loss, augmentation, search, cross-validation, metrics, CAM."""
