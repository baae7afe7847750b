"""The training loop: RetinaNet with the configured loss, sampler and augmentation; validation
per class; atomic, resumable checkpoints; DDP under torchrun.

Run folder (``runs/train/NAME``): ``config.yaml`` (the resolved config), ``metrics.csv`` (a row
per epoch), ``weights/last.pt`` (everything needed to resume) and ``weights/best.pt`` (the model
with the best ``--select-metric``), ``weights/epochN.pt`` (``--save-period``), ``training.png``.

Ctrl-C finishes the current step, saves a resumable ``last.pt`` (mid-epoch: the steps already
done are skipped on resume, in the same order) and exits; a second Ctrl-C stops at once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

import defectdet.engine.train.distributed as ddp
from defectdet.config import (
    SELECT_LAST,
    TrainConfig,
    from_dict,
    resolve_preset,
    to_dict,
    to_yaml,
    upgrade,
    validate,
)
from defectdet.console import out
from defectdet.data.augment import (
    CopyPaste,
    build_minority_transforms,
    build_transforms,
    find_rare_classes,
)
from defectdet.data.dataset import DetectionDataset, make_loader, set_epoch
from defectdet.data.sampling import EpochSampler
from defectdet.engine.evaluate.metrics import MetricsResult
from defectdet.engine.progress import RateProgress, print_sampling
from defectdet.engine.train.budget import BudgetMixin
from defectdet.engine.train.checkpointing import CheckpointMixin
from defectdet.engine.train.history import History
from defectdet.engine.train.interrupt import ResumableSampler, _GracefulInterrupt
from defectdet.engine.train.mining import MiningMixin
from defectdet.engine.train.multiscale import draw_side, rescale_batch
from defectdet.engine.train.schedule import (
    build_ema,
    build_optimizer,
    build_scheduler,
)
from defectdet.engine.train.setup import Resolved, load_run_data, new_run_dir, resolve
from defectdet.engine.train.validation import ValidationMixin
from defectdet.errors import CheckpointError, ConfigError, DefectdetError
from defectdet.io import write_text
from defectdet.model import (
    Criterion,
    autocast_enabled,
    build_model,
    channels_last_enabled,
    load_checkpoint,
    prepare_model,
    resolve_device,
    save_checkpoint,
)
from defectdet.model.device import amp_dtype, to_model_input
from defectdet.model.pretrained import load_initial_weights

PROVISIONAL_STEPS = 10**6
"""The schedule's length under --time-budget until the first steps have been timed."""


class TrainingDiverged(DefectdetError):
    """The loss became NaN or infinite."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, after a resumable checkpoint was saved."""


def train(
    cfg: TrainConfig | None = None,
    resume: str | Path | None = None,
    given: Iterable[str] | None = None,
) -> Path:
    """Train a run from ``cfg``, or resume the run at ``resume`` with its own saved config;
    returns the run folder. Options are checked before any data is read.

    ``given``: the option names the user set, which the preset leaves alone (None: those not at
    their default; see :func:`defectdet.config.resolve_preset`)."""
    if resume is not None:
        run_dir, ckpt = resume_checkpoint(resume)
        cfg = ckpt["config"]
    elif cfg is None:
        raise ConfigError("train needs a config or a run to resume")
    else:
        cuda = resolve_device(validate(cfg).run.device).type == "cuda"
        cfg = validate(resolve_preset(cfg, given, cuda))
        ckpt = None
    info = ddp.init_distributed(cfg.run.device)
    try:
        return Trainer(cfg, info, (run_dir, ckpt) if ckpt is not None else None).fit()
    finally:
        ddp.cleanup(info)


def resume_checkpoint(path: str | Path) -> tuple[Path, dict]:
    """The run folder and its ``last.pt`` for ``--resume RUN`` (a run folder or a .pt file)."""
    path = Path(path)
    ckpt_path = path if path.suffix == ".pt" else path / "weights" / "last.pt"
    run_dir = ckpt_path.parent.parent
    ckpt = load_checkpoint(ckpt_path)
    if "optimizer" not in ckpt or "state" not in ckpt:
        raise CheckpointError(f"{ckpt_path} is not a resumable checkpoint (use last.pt)")
    try:  # the run continues with the config it saved: it must still parse...
        cfg = from_dict(TrainConfig, upgrade(ckpt.get("config")), "config")
    except ConfigError as exc:
        raise CheckpointError(f"{ckpt_path}: cannot resume, its saved {exc}") from None
    try:  # ...and hold allowed values (checked like options from any other source)
        ckpt["config"] = validate(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{ckpt_path}: cannot resume, its saved options: {exc}") from None
    ckpt["resolved"] = Resolved.from_checkpoint(ckpt, str(ckpt_path))
    return run_dir, ckpt


class Trainer(CheckpointMixin, BudgetMixin, MiningMixin, ValidationMixin):
    """One training run: set-up, the loop, checkpoints; the time budget, mining, validation and
    the final calibration come from their mixins."""

    def __init__(
        self, cfg: TrainConfig, info: ddp.DistInfo, resume: tuple[Path, dict] | None = None
    ):
        self.info, self.cfg = info, cfg
        run_dir, ckpt = resume if resume is not None else (None, None)
        self.device = resolve_device(ddp.device_for(info, cfg.run.device))
        torch.manual_seed(cfg.run.seed)
        self.data = load_run_data(cfg)
        if info.is_main:
            from defectdet.console import print_problems

            print_problems(self.data.catalog.problems)
        self.resolved = ckpt["resolved"] if ckpt is not None else resolve(cfg, self.data)
        if ckpt is None:
            run_dir = new_run_dir(cfg) if info.is_main else None
            run_dir = ddp.broadcast(info, run_dir)
        self.run_dir = Path(run_dir)
        if info.is_main:
            write_text(self.run_dir / "config.yaml", to_yaml(to_dict(cfg)))
            write_text(self.run_dir / "resolved.yaml", to_yaml(self.resolved.to_dict()))
        self.amp = autocast_enabled(cfg.run.amp, self.device)
        self.channels_last = channels_last_enabled(cfg.run.channels_last, self.device)
        spec = self.resolved.spec
        criterion = Criterion(cfg.loss, self.resolved.class_weights, cfg.model.image_head)
        model = build_model(spec, criterion, trainable_layers=cfg.model.trainable_backbone_layers)
        if ckpt is None:
            load_initial_weights(model, spec, cfg.model.weights, cfg.model.backbone_weights)
        model.transform.multi_scale = cfg.augment.multi_scale > 0
        self.model = prepare_model(model, self.device, self.channels_last)
        self.ddp_model = self._wrap(self.model)
        self.loader, self.sampler = self._build_loader()
        self.state = {
            "epoch": 0,
            "epochs": cfg.optim.epochs,  # with --time-budget, fitted to the measured speed
            "elapsed": 0.0,  # seconds of training and validation so far (the budget's clock)
            "step_in_epoch": 0,
            "global_step": 0,
            "total_steps": self._total_steps(),
            "best": -math.inf,
            "best_epoch": -1,
            "bad_epochs": 0,
            "finished": False,
        }
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.ema = build_ema(self.model, cfg.optim.ema, self.state["total_steps"])
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, self.state["total_steps"])
        use_scaler = self.amp and amp_dtype(self.device) == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self.history = History(self.run_dir, spec.class_names)
        self.budget = cfg.optim.time_budget * 60  # seconds; 0 = off
        self._probe: list[float] = []  # clock readings of the first steps (budget fitting)
        self._val_seconds = 0.0
        self.eval_every = cfg.run.eval_interval  # --time-budget may thin the validations
        if ckpt is not None:
            self._load_state(ckpt, run_dir)
        self._stop_requested = False

    clock = staticmethod(time.perf_counter)  # the budget's clock (tests replace it)

    # ------------------------------------------------------------------ set-up pieces
    def _wrap(self, model: nn.Module) -> nn.Module:
        if not self.info.enabled:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def _build_loader(self):
        cfg, train = self.cfg, self.data.train
        size, tile = self.resolved.spec.image_size, self.resolved.spec.train_tile
        counts = train.instance_counts()
        rare = find_rare_classes(counts)
        copy_paste = (
            CopyPaste(train, rare, p=cfg.augment.copy_paste)
            if cfg.augment.copy_paste > 0 and rare
            else None
        )
        dataset = DetectionDataset(
            train,
            size,
            build_transforms(cfg.augment, size, train=True, tile=tile),
            minority_transforms=build_minority_transforms(cfg.augment, size, tile)
            if cfg.augment.augment_minority
            else None,
            rare_classes=rare,
            copy_paste=copy_paste,
            seed=cfg.run.seed,
            uint8=True,
        )
        sampler = ResumableSampler(
            EpochSampler(
                train.image_class_counts(),
                cfg.sampler,
                cfg.run.seed,
                self.info.rank,
                self.info.world_size,
            )
        )
        return make_loader(dataset, sampler, cfg.optim.batch_size, cfg.run.workers, True), sampler

    def _total_steps(self) -> int:
        if self.cfg.optim.time_budget:  # provisional: no decay until the budget is fitted
            return PROVISIONAL_STEPS
        per_epoch = math.ceil(len(self.sampler) / self.cfg.optim.batch_size)
        total = per_epoch * self.cfg.optim.epochs
        return min(total, self.cfg.run.max_steps) if self.cfg.run.max_steps else total

    # ------------------------------------------------------------------ the loop
    def fit(self) -> Path:
        if self.info.is_main:
            self._announce()
        with _GracefulInterrupt(self):
            while (epoch := self.state["epoch"]) < self.state["epochs"]:
                t0 = self.clock()
                self._epoch_start, self._epoch_first_step = t0, self.state["global_step"]
                losses = self._train_epoch(epoch)
                if self._stop_requested:
                    self._save_last()
                    raise Interrupted(self._resume_hint())
                self.state.update(epoch=epoch + 1, step_in_epoch=0)
                stop = self._end_epoch(epoch, losses, self.clock() - t0)
                self.state["elapsed"] += self.clock() - t0
                if stop:
                    break
        self.state["finished"] = True  # compare and scripts tell done runs from partial ones
        self._save_last()
        if self.info.is_main:
            self._finish()
        return self.run_dir

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        set_epoch(self.loader, epoch)
        self.sampler.skip = self.state["step_in_epoch"] * self.cfg.optim.batch_size
        self.ddp_model.train()
        # Loss sums of the epoch's steps so far, kept in the state: a resumed epoch averages over
        # all its steps, as an uninterrupted one does.
        done = self.state["step_in_epoch"]
        sums: dict[str, float] = dict(self.state.get("epoch_loss_sums") or {}) if done else {}
        steps = 0
        label = f"epoch {epoch + 1}/{self.state['epochs']}"
        with RateProgress(label, len(self.loader), enabled=self.info.is_main) as bar:
            for images, targets in self.loader:
                parts = self._step(images, targets)
                steps += 1
                self._budget_probe()
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v
                self.state["epoch_loss_sums"] = dict(sums)
                lr = self.optimizer.param_groups[0]["lr"]
                info = " ".join(f"{k} {v:.3f}" for k, v in parts.items()) + f" lr {lr:.2e}"
                bar.advance(len(targets) * self.info.world_size, steps=1, info=info)
                if self._stop_requested or self._out_of_steps():
                    break
        self.sampler.skip = 0
        return {k: v / max(done + steps, 1) for k, v in sums.items()}

    def _step(self, images: torch.Tensor, targets: list[dict]) -> dict[str, float]:
        batch = to_model_input(images, self.device, self.channels_last)
        tgts = [
            {"boxes": t["boxes"].to(self.device), "labels": t["labels"].to(self.device)}
            for t in targets
        ]
        if self.cfg.augment.multi_scale:
            size, step = self.resolved.spec.image_size, self.state["global_step"]
            side = draw_side(size, self.cfg.augment.multi_scale, self.cfg.run.seed, step)
            batch, tgts = rescale_batch(batch, tgts, side)
        with torch.autocast(self.device.type, dtype=amp_dtype(self.device), enabled=self.amp):
            loss_dict = self.ddp_model(list(batch), tgts)
        loss = sum(loss_dict.values())
        if not torch.isfinite(loss):
            raise TrainingDiverged(self._diverged_message(float(loss.detach())))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.optim.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.state["global_step"] += 1
        self.state["step_in_epoch"] += 1
        short = {"classification": "cls", "bbox_regression": "box", "image": "img"}
        parts = {"loss": float(loss.detach())}
        parts.update((short[k], float(v.detach())) for k, v in loss_dict.items())
        return ddp.all_reduce_mean(self.info, parts)

    def _out_of_steps(self) -> bool:
        step = self.state["global_step"]
        if self.budget and self.resolved.schedule and step >= self.state["total_steps"]:
            return True
        return bool(self.cfg.run.max_steps) and step >= self.cfg.run.max_steps

    def _diverged_message(self, value: float) -> str:
        s = self.state
        return (
            f"the loss became {value} at epoch {s['epoch'] + 1}, step "
            f"{s['step_in_epoch'] + 1} (global step {s['global_step'] + 1}). Try a lower "
            f"--lr (now {self.cfg.optim.lr:g}), a longer warm-up (--warmup-iters), "
            f"--grad-clip, {'--no-amp, ' if self.amp else ''}and check the data for "
            "broken boxes (defectdet analyze --strict). The last good checkpoint is "
            f"{self.run_dir / 'weights' / 'last.pt'}."
        )

    def _end_epoch(self, epoch: int, losses: dict[str, float], seconds: float) -> bool:
        """Validate, log, checkpoint; True when training should stop now."""
        if self.budget and not self._out_of_steps():  # (re-)fit to this epoch's measured speed
            # (before the first fit the provisional schedule spans --epochs; it never stops early)
            steps = max(self.state["global_step"] - self._epoch_first_step, 1)
            self._fit_budget((self.clock() - self._epoch_start) / steps)
        last = epoch + 1 >= self.state["epochs"] or self._out_of_steps()
        metrics = None
        due = (epoch + 1) % max(self.eval_every, 1) == 0 or last
        if due and self.info.is_main and self.data.val.num_images:
            t = self.clock()
            metrics = self.validate()
            self._val_seconds = self.clock() - t
        mining = self._mine_if_due(epoch, due and not last)
        stop = False
        if self.info.is_main:
            stop = self._record(epoch, losses, metrics, seconds, mining)
        stop = bool(ddp.broadcast(self.info, stop))
        return stop or self._out_of_steps()

    def _record(
        self,
        epoch: int,
        losses: dict,
        metrics: MetricsResult | None,
        seconds: float,
        mining: dict[str, float] | None = None,
    ) -> bool:
        row = {
            "epoch": epoch + 1,
            **{f"train_{k}": v for k, v in losses.items()},
            "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": round(seconds, 2),
            **(metrics.flat() if metrics is not None else {}),
            **(mining or {}),
        }
        self.history.append(row)
        metric = self.cfg.run.select_metric
        # last ranks by epoch number: each validation beats the one before
        value = row["epoch"] if metric == SELECT_LAST else row.get(metric)
        improved = metrics is not None and value is not None and value > self.state["best"]
        if improved or self.state["best_epoch"] < 0:
            self.state.update(
                best=value if value is not None else -math.inf, best_epoch=epoch + 1, bad_epochs=0
            )
            save_checkpoint(self.run_dir / "weights" / "best.pt", self._payload(False, metrics))
            self._best_dets = self._val_dets if metrics is not None else None
        elif metrics is not None:
            self.state["bad_epochs"] += 1
        self._save_snapshot(epoch + 1, metrics)
        self._save_last()
        self.history.write()
        self.history.print_epoch(row, improved)
        patience = self.cfg.run.patience
        if patience and self.state["bad_epochs"] >= patience:
            out.print(
                f"early stop: no {self.cfg.run.select_metric} gain in {patience} "
                f"evaluations (best at epoch {self.state['best_epoch']})"
            )
            return True
        return False

    # ------------------------------------------------------------------ messages
    def _announce(self) -> None:
        cfg = self.cfg
        out.print(
            f"[bold]run[/] {self.run_dir}  device {self.device}"
            f"{' (AMP)' if self.amp else ''}  world {self.info.world_size}  "
            f"train {self.data.train.num_images} / val {self.data.val.num_images} images  "
            f"image size {self.resolved.spec.image_size}  {cfg.model.backbone}  "
            f"loss {cfg.loss.loss}"
            + (f" γ={cfg.loss.gamma:g} α={cfg.loss.alpha:g}" if cfg.loss.loss == "focal" else "")
        )
        print_sampling(self.sampler.inner.stats(), self.resolved.spec.class_names)
        train_ids = set(self.data.train.images["image_id"])
        for folder, ids in self.data.catalog.negatives.items():
            n = len(train_ids.intersection(ids))
            out.print(f"  of the defect-free images, {n} from --negatives {folder}")
        if self.state["global_step"]:
            out.print(
                f"resuming at epoch {self.state['epoch'] + 1}, step "
                f"{self.state['step_in_epoch']} (global step {self.state['global_step']})"
            )

    def _resume_hint(self) -> str:
        return (
            f"saved a resumable checkpoint; continue with: defectdet train --resume {self.run_dir}"
        )

    def _finish(self) -> None:
        self.history.plot()
        s, metric = self.state, self.cfg.run.select_metric
        picked = (
            "best.pt is the last validated epoch"
            if metric == SELECT_LAST
            else f"best {metric} = {s['best'] if s['best'] > -math.inf else 'n/a'} at epoch"
        )
        out.print(f"done: {picked} {s['best_epoch']}; weights in {self.run_dir / 'weights'}")
        self._warn_early_pick()
        self._calibrate()
