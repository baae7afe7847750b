"""The shared dataset layer: formats, validation, splits, sampling, augmentation, Dataset."""

from defectdet.data.catalog import Catalog
from defectdet.data.problems import Problem, ProblemLog

__all__ = ["Catalog", "Problem", "ProblemLog"]
