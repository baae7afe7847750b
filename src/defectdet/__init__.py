"""defectdet: object detection for industrial defects with badly imbalanced classes."""

__version__ = "0.1.0"
