"""The loops that drive the model, one folder per command or stage: ``inference`` (the one
path from images to detections, shared by the others), ``evaluate``, ``predict``, ``train``,
``compare``, and ``export``."""
