"""Training images/s: defectdet's training step and data pipeline against a plain loop over the
same torchvision RetinaNet (torchvision's reference ``train_one_epoch`` style), same data, same
batch size, same input size.

Configurations:
  plain        torchvision RetinaNet (resnet18-FPN, 256-ch 4-conv head, P3-P7), its own
               transform (resizes every image), PIL decoding in DataLoader workers,
               per-image loss normalisation.
  ours-default defectdet's Trainer step at the same architecture (uint8 batches, no re-resize,
               batch-normalised focal loss).
  ours-narrow  defectdet with --fpn-channels 64 --head-convs 2 --levels 3-5 (what the options buy).

Run: .venv/bin/python benchmarks/train_throughput.py [--size 192] [--steps 8] [--batch 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.resnet import resnet18
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.transforms.functional import pil_to_tensor

from defectdet.config import TrainConfig
from defectdet.data.formats import load_dataset
from defectdet.data.synth import SynthConfig, synthesize
from defectdet.engine.train.loop import Trainer
from defectdet.engine.train.setup import RunData


def plain_model(num_classes: int, size: int) -> RetinaNet:
    backbone = _resnet_fpn_extractor(
        resnet18(), 3, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256)
    )
    head = RetinaNetHead(256, 9, num_classes)
    return RetinaNet(backbone, num_classes, min_size=size, max_size=size, head=head)


class PlainDataset(torch.utils.data.Dataset):
    """The reference style: PIL decode, to tensor, boxes as given."""

    def __init__(self, catalog):
        self.catalog, self.boxes = catalog, catalog.boxes_by_image()
        self.rows = list(catalog.images.itertuples(index=False))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        r = self.rows[i]
        img = pil_to_tensor(Image.open(self.catalog.path_of(r.file_name)).convert("RGB"))
        b = self.boxes.get(int(r.image_id), np.zeros((0, 5)))
        return img.float() / 255, {
            "boxes": torch.as_tensor(b[:, :4], dtype=torch.float32),
            "labels": torch.as_tensor(b[:, 4], dtype=torch.int64),
        }


def time_plain(catalog, size: int, batch: int, steps: int, workers: int) -> float:
    model = plain_model(catalog.num_classes, size).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    loader = torch.utils.data.DataLoader(
        PlainDataset(catalog),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        collate_fn=_collate,
    )
    return _timed(loader, steps, batch, partial(_plain_step, model, opt))


def _collate(batch):
    return tuple(zip(*batch, strict=True))


def _plain_step(model, opt, images, targets) -> None:
    loss = sum(model(list(images), list(targets)).values())
    opt.zero_grad()
    loss.backward()
    opt.step()


def time_ours(
    catalog, root: Path, size: int, batch: int, steps: int, workers: int, narrow: bool
) -> float:
    cfg = TrainConfig()
    cfg.data.path = str(root)
    cfg.model.image_size = size
    if narrow:
        cfg.model.fpn_channels, cfg.model.head_convs = 64, 2
        cfg.model.levels = "3-5"
    cfg.augment.augment = "none"
    cfg.optim.batch_size, cfg.optim.lr, cfg.optim.warmup_iters = batch, 0.001, 0
    cfg.run.workers, cfg.run.project = workers, str(root / "runs")
    trainer = Trainer(cfg, _single(), None)
    trainer.data = RunData(catalog, catalog, catalog.subset([]))
    return _timed(trainer.loader, steps, batch, trainer._step)


def _single():
    from defectdet.engine.train.distributed import DistInfo

    return DistInfo()


def _timed(loader, steps: int, batch: int, step_fn, warmup: int = 2) -> float:
    it = iter(loader)
    for _ in range(warmup):
        step_fn(*next(it))
    t = time.perf_counter()
    for _ in range(steps):
        try:
            images, targets = next(it)
        except StopIteration:
            it = iter(loader)
            images, targets = next(it)
        step_fn(images, targets)
    return steps * batch / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--data", type=Path, default=None, help="dataset (default: generated)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data or Path(tmp) / "data"
        if args.data is None:
            synthesize(root, SynthConfig(images=120, width=args.size, height=args.size, seed=1))
        catalog = load_dataset(root)
        rows = [
            (
                "plain torchvision loop",
                time_plain(catalog, args.size, args.batch, args.steps, args.workers),
            )
        ]
        for narrow in (False, True):
            name = "defectdet, narrow head" if narrow else "defectdet, same architecture"
            rows.append(
                (
                    name,
                    time_ours(
                        catalog, root, args.size, args.batch, args.steps, args.workers, narrow
                    ),
                )
            )
    print(
        f"train images/s at {args.size} px, batch {args.batch}, {args.steps} timed steps, "
        f"{torch.get_num_threads()} threads, {args.workers} workers"
    )
    base = rows[0][1]
    for name, rate in rows:
        print(f"  {name:32s} {rate:6.2f} img/s  ({rate / base:4.2f}x)")


if __name__ == "__main__":
    main()
