"""LVIS repeat factors (Gupta et al. 2019): the one implementation, shared by training and analysis.

``--sampler repeat-factor`` (:class:`~defectdet.data.sampling.EpochSampler`) repeats each image by
:func:`repeat_factors_per_image`; ``defectdet analyze`` reports the per-class
:func:`repeat_factors`, so what it prints is exactly what training does. This module needs only
numpy: the analysis imports it without pulling in torch (which ``sampling`` needs).
"""

from __future__ import annotations

import numpy as np


def repeat_factors(image_freq: np.ndarray, t: float) -> np.ndarray:
    """Per-class repeat factors r(c) = max(1, sqrt(t / f(c))).

    ``image_freq`` is the fraction of images that contain each class. A class in no image gets
    1.0: there is no image to repeat, and a finite value keeps downstream arithmetic simple.
    """
    f = np.asarray(image_freq, dtype=np.float64)
    out = np.ones_like(f)
    present = f > 0
    out[present] = np.maximum(1.0, np.sqrt(t / f[present]))
    return out


def repeat_factors_per_image(image_class_counts: np.ndarray, t: float) -> np.ndarray:
    """Per-image repeat factors, (num_images,) float: the largest :func:`repeat_factors` of the
    classes an image contains, ``f(c)`` being the fraction of images that contain class ``c``.
    Background images get 1."""
    present = np.asarray(image_class_counts) > 0
    class_factor = repeat_factors(present.sum(axis=0) / max(len(present), 1), t)
    per_image = np.where(present, class_factor[None, :], 1.0)
    return per_image.max(axis=1, initial=1.0)
