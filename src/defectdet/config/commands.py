"""The configs of the inference commands, assembled from the option sections of
:mod:`.options` (``train`` and ``compare`` take :class:`~.options.TrainConfig`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from defectdet.config.inference import CalibrateConfig, InferConfig, RuntimeConfig, TileConfig


@dataclass
class PredictConfig:
    """What ``predict`` and ``evaluate`` take besides the data and the output options."""

    infer: InferConfig = field(default_factory=InferConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    tiles: TileConfig = field(default_factory=TileConfig)


@dataclass
class CalibrateRunConfig:
    """What ``calibrate`` takes besides the data, the weights and the output."""

    calibrate: CalibrateConfig = field(default_factory=CalibrateConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    tiles: TileConfig = field(default_factory=TileConfig)

    def cross_check(self) -> None:
        self.calibrate.cross_check()
