"""Training, evaluation, prediction and export: the loops that drive the model."""
