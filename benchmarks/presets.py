"""Cost of each preset: GFLOPs per image, CPU training and prediction images/s.

Every preset's model (6 classes, anchors as the preset sets them: the default sizes here, since
fitted ones need data) is built from scratch and timed on random images at a common input size
(``--size``, default 320) and GFLOPs are also given at the preset's own input cap. Training
images/s: forward, backward and an AdamW/SGD step as the preset sets them, batch ``--batch``;
prediction images/s: eval-mode forward with post-processing, batch 8. Best of ``--rounds``.

Run: .venv/bin/python benchmarks/presets.py [--size 320] [--batch 8] [--steps 4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from defectdet.config import PRESETS, TrainConfig, apply, resolve_preset
from defectdet.model import ModelSpec, build_model
from defectdet.model.criterion import Criterion

CLASSES = ["open", "short", "mousebite", "spur", "copper", "pin-hole"]


def preset_spec(name: str, size: int) -> tuple[ModelSpec, TrainConfig]:
    cfg = resolve_preset(apply(TrainConfig(), {"preset": name}), {"preset"}, cuda=False)
    return ModelSpec.from_config(cfg.model, CLASSES, size), cfg


@torch.inference_mode()
def gflops(spec: ModelSpec) -> float:
    model = build_model(spec).eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model([torch.rand(3, spec.image_size, spec.image_size)])
    return counter.get_total_flops() / 1e9


def _targets(n: int, size: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        xy = torch.rand(4, 2, generator=g) * size * 0.8
        wh = 8 + torch.rand(4, 2, generator=g) * size * 0.15
        boxes = torch.cat([xy, xy + wh], 1)
        out.append({"boxes": boxes, "labels": torch.randint(0, len(CLASSES), (4,), generator=g)})
    return out


def train_rate(spec: ModelSpec, cfg: TrainConfig, batch: int, steps: int) -> float:
    model = build_model(spec, Criterion(cfg.loss)).train()
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optim.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=cfg.optim.lr)
    else:
        opt = torch.optim.SGD(params, lr=cfg.optim.lr, momentum=0.9)
    images = [torch.rand(3, spec.image_size, spec.image_size) for _ in range(batch)]
    targets = _targets(batch, spec.image_size)

    def step() -> None:
        loss = sum(model(images, targets).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - t)


@torch.inference_mode()
def predict_rate(spec: ModelSpec, steps: int) -> float:
    model = build_model(spec).eval()
    images = [torch.rand(3, spec.image_size, spec.image_size) for _ in range(8)]
    model(images)
    t = time.perf_counter()
    for _ in range(steps):
        model(images)
    return steps * 8 / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {load:.1f}")
    print(
        f"| preset | model | input cap | GFLOPs @{args.size} | GFLOPs @cap | "
        f"train img/s @{args.size} | predict img/s @{args.size} |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, preset in PRESETS.items():
        spec, cfg = preset_spec(name, args.size)
        cap = int(preset.values["max_image_size"])
        at_cap = gflops(preset_spec(name, cap)[0])
        train = max(train_rate(spec, cfg, args.batch, args.steps) for _ in range(args.rounds))
        pred = max(predict_rate(spec, args.steps) for _ in range(args.rounds))
        m = cfg.model
        model = f"{m.backbone}, {m.fpn_channels} ch × {m.head_convs} convs, P{m.levels}"
        print(
            f"| {name} | {model} | {cap} | {gflops(spec):.1f} | {at_cap:.1f} | {train:.1f} | "
            f"{pred:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
