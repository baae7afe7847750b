"""The training loop's controls, each against what it must do: the learning-rate schedules
against their formulas, ``--grad-clip``, a diverged loss (NaN and infinite), a first and a second
Ctrl-C, early stopping (``--patience``), ``best.pt`` chosen by ``--select-metric``, and
``compare`` resuming an interrupted variant.

Most tests replace the optimiser step and validation with fakes (:func:`fake_loop`): what the
loop does with their results is under test, not the model, so they take about a second each.
"""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from conftest import TINY_MODEL_ARGS
from defectdet.config import OptimConfig
from defectdet.engine.train import loop
from defectdet.engine.train.distributed import DistInfo
from defectdet.engine.train.history import early_pick_caveat
from defectdet.engine.train.loop import Interrupted, train
from defectdet.engine.train.schedule import build_optimizer, build_scheduler, lr_factor
from defectdet.model import load_checkpoint
from test_hardening import cli
from test_train import make_easy_dataset, tiny_config


@pytest.fixture(scope="module")
def easy_data(tmp_path_factory) -> Path:
    """8 training images: 2 steps an epoch at batch size 4."""
    return make_easy_dataset(tmp_path_factory.mktemp("easy"))


# ---------------------------------------------------------------------------- schedules
# Written out apart from schedule.py: linear warm-up from 0.001 of the base rate, then cosine
# down to 0.01 of it, or steps of 10x at fractions of training.
COSINE = {  # step -> factor, 10 warm-up steps, 110 in all: progress (step - 10) / 100
    10: 1.0,
    35: 0.01 + 0.99 * (1 + math.sqrt(0.5)) / 2,  # a quarter: cos(pi / 4)
    60: 0.505,  # half way: the mean of 1 and 0.01
    85: 0.01 + 0.99 * (1 - math.sqrt(0.5)) / 2,
    110: 0.01,
    150: 0.01,  # past the end (a resumed run with more steps): stays at the floor
}
STEP = {10: 1.0, 49: 1.0, 50: 0.1, 79: 0.1, 80: 0.01, 100: 0.01}  # milestones 0.5, 0.8 of 100


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_warmup_rises_linearly_from_a_thousandth(schedule: str):
    cfg = OptimConfig(schedule=schedule, warmup_iters=10, step_milestones=[0.5, 0.8])
    for step in range(10):
        assert lr_factor(step, cfg, 110) == pytest.approx(0.001 + 0.999 * step / 10)
    assert lr_factor(10, cfg, 110) == pytest.approx(1.0)


def test_cosine_and_step_schedules_follow_their_formulas():
    cosine = OptimConfig(schedule="cosine", warmup_iters=10)
    for step, factor in COSINE.items():
        assert lr_factor(step, cosine, 110) == pytest.approx(factor), step
    step_cfg = OptimConfig(schedule="step", warmup_iters=10, step_milestones=[0.5, 0.8])
    for step, factor in STEP.items():
        assert lr_factor(step, step_cfg, 100) == pytest.approx(factor), step


def test_the_optimiser_gets_the_scheduled_rate_at_every_step():
    cfg = OptimConfig(lr=0.02, optimizer="sgd", schedule="cosine", warmup_iters=10)
    optimizer = build_optimizer(nn.Linear(2, 1), cfg)
    scheduler = build_scheduler(optimizer, cfg, 110)
    rates = []
    for _ in range(151):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    for step in range(10):
        assert rates[step] == pytest.approx(0.02 * (0.001 + 0.999 * step / 10))
    for step, factor in COSINE.items():
        assert rates[step] == pytest.approx(0.02 * factor), step


# ---------------------------------------------------------------------------- grad clip
def test_grad_clip_bounds_the_update(easy_data: Path, tmp_path: Path, monkeypatch):
    """Plain SGD (no momentum, no weight decay) moves the weights by lr x the gradient, so the
    update's norm / lr is the norm of the gradient it used: with a loss scaled up 10^4, exactly
    the --grad-clip limit with clipping, and far above it without."""
    from defectdet.model.head import DefectRetinaNetHead

    compute_loss = DefectRetinaNetHead.compute_loss

    def huge_loss(self, *args, **kwargs):
        return {k: v * 1e4 for k, v in compute_loss(self, *args, **kwargs).items()}

    monkeypatch.setattr(DefectRetinaNetHead, "compute_loss", huge_loss)
    lr, limit, moved = 0.1, 0.5, {}
    for clip in (0.0, limit):
        cfg = tiny_config(
            easy_data,
            tmp_path / f"clip{clip}",
            optim__optimizer="sgd",
            optim__lr=lr,
            optim__momentum=0.0,
            optim__weight_decay=0.0,
            optim__warmup_iters=0,
            optim__grad_clip=clip,
        )
        trainer = loop.Trainer(cfg, DistInfo())
        assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(lr)
        images, targets = next(iter(trainer.loader))
        params = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
        before = {n: p.detach().clone() for n, p in params.items()}
        trainer._step(images, targets)
        change = [(p.detach() - before[n]).double() for n, p in params.items()]
        moved[clip] = math.sqrt(sum(float((c**2).sum()) for c in change)) / lr
    assert moved[limit] == pytest.approx(limit, rel=0.01)
    assert moved[0.0] > 100 * limit  # the gradient was far above the limit


# ---------------------------------------------------------------------------- fake loop
class FakeMetrics:
    """Validation results with the two views the loop uses."""

    def __init__(self, values: dict[str, float]) -> None:
        self.values = values

    def flat(self) -> dict[str, float]:
        return dict(self.values)

    def to_dict(self) -> dict[str, float]:
        return dict(self.values)


def fake_loop(monkeypatch, metrics: list[dict] | None = None, before_step=None) -> None:
    """Steps that only count (and write the global step into one bias, so each step's weights
    differ); validation returning ``metrics[epoch - 1]``; no calibration. ``before_step(trainer)``
    runs at the start of each step."""

    def step(self, images, targets):
        if before_step is not None:
            before_step(self)
        self.state["global_step"] += 1
        self.state["step_in_epoch"] += 1
        with torch.no_grad():
            self.model.head.classification_head.cls_logits.bias.fill_(self.state["global_step"])
        return {"loss": 1.0 / self.state["global_step"], "cls": 0.5, "box": 0.5}

    def validate(self):
        return FakeMetrics(metrics[self.state["epoch"] - 1] if metrics else {"map50": 0.5})

    monkeypatch.setattr(loop.Trainer, "_step", step)
    monkeypatch.setattr(loop.Trainer, "validate", validate)
    monkeypatch.setattr(loop.Trainer, "_calibrate", lambda self: None, raising=False)


def bias_step(checkpoint: Path) -> int:
    """The global step whose weights ``checkpoint`` holds (see :func:`fake_loop`)."""
    bias = load_checkpoint(checkpoint)["model"]["head.classification_head.cls_logits.bias"]
    return int(bias[0])


def cli_args(data: Path, project: Path, epochs: int = 2) -> list:
    return [data, "--project", project, "--epochs", epochs, "--batch-size", 4, *TINY_MODEL_ARGS]


# ---------------------------------------------------------------------------- Ctrl-C
@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_once_saves_the_step_and_twice_stops_at_once(
    presses: int, easy_data: Path, tmp_path: Path, monkeypatch
):
    """Real SIGINTs in the third step (epoch 2). Once: the step finishes, last.pt is saved
    there and the run exits 130 with how to resume. Twice: it stops inside the step, with no
    save (last.pt stays epoch 1's), also 130; the handler is restored either way."""
    finished = []

    def press_ctrl_c(trainer):
        if trainer.state["global_step"] == 2:
            for _ in range(presses):
                os.kill(os.getpid(), signal.SIGINT)
            finished.append(trainer.state["global_step"])  # the rest of the step runs

    fake_loop(monkeypatch, before_step=press_ctrl_c)
    handler = signal.getsignal(signal.SIGINT)
    result = cli("train", *cli_args(easy_data, tmp_path), code=130)
    assert signal.getsignal(signal.SIGINT) is handler
    output = " ".join(result.output.split())
    run = tmp_path / "exp"
    state = load_checkpoint(run / "weights" / "last.pt")["state"]
    assert "Ctrl-C again to stop at once" in output
    if presses == 1:
        assert finished == [2]
        assert f"continue with: defectdet train --resume {run}" in output
        assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 1, 3)
    else:
        assert finished == []
        assert "interrupted" in output and "--resume" not in output
        assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 0, 2)
    assert not state["finished"]


# ---------------------------------------------------------------------------- divergence
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_diverged_loss_exits_1_naming_epoch_and_step(
    value: str, easy_data: Path, tmp_path: Path, monkeypatch
):
    """The loss turns NaN or infinite at the first step of epoch 2 (global step 3): exit 1 with
    one message naming where, what to change, and the last good checkpoint, which is intact."""
    from defectdet.model.head import DefectRetinaNetHead

    compute_loss, calls = DefectRetinaNetHead.compute_loss, []

    def diverging(self, *args, **kwargs):
        parts = compute_loss(self, *args, **kwargs)
        calls.append(None)
        if len(calls) == 3:
            parts["classification"] = parts["classification"] * float(value)
        return parts

    monkeypatch.setattr(DefectRetinaNetHead, "compute_loss", diverging)
    last = tmp_path / "exp" / "weights" / "last.pt"
    says = (
        f"the loss became {value} at epoch 2, step 1 (global step 3)",
        "--lr (now 0.001)",
        "--grad-clip",
        f"The last good checkpoint is {last}",
    )
    args = [*cli_args(easy_data, tmp_path), "--eval-interval", 2, "--lr", 0.001]
    result = cli("train", *args, code=1)
    output = " ".join(result.output.split())
    for fragment in says:
        assert fragment in output, (fragment, output)
    assert load_checkpoint(last)["state"]["global_step"] == 2  # the end of epoch 1
    assert len(calls) == 3


# ---------------------------------------------------------------------------- patience
def test_patience_stops_after_n_validations_without_gain(
    easy_data: Path, tmp_path: Path, monkeypatch
):
    """--patience 2 over 8 epochs: the best is epoch 3 (a gain after a loss resets the count),
    then epochs 4 and 5 bring no gain: the run stops after epoch 5, finished, best.pt epoch 3."""
    ap = [0.5, 0.4, 0.6, 0.3, 0.2, 0.1, 0.0, 0.0]
    fake_loop(monkeypatch, metrics=[{"mean_class_ap50": v} for v in ap])
    run = train(tiny_config(easy_data, tmp_path, optim__epochs=8, run__patience=2))
    assert list(pd.read_csv(run / "metrics.csv")["epoch"]) == [1, 2, 3, 4, 5]
    state = load_checkpoint(run / "weights" / "last.pt")["state"]
    assert state["finished"] and state["epoch"] == 5 and state["global_step"] == 10
    assert (state["best_epoch"], state["best"]) == (3, 0.6)
    assert load_checkpoint(run / "weights" / "best.pt")["epoch"] == 3
    assert bias_step(run / "weights" / "best.pt") == 6  # the weights of the end of epoch 3


# ---------------------------------------------------------------------------- select metric
# Per epoch, metrics that peak at different epochs (1, 2, 3 and 4).
_KEYS = ("mean_class_ap50", "map50", "pooled_ap50", "ap50_white", "ap50_black")
EPOCH_METRICS = [
    dict(zip(_KEYS, values, strict=True))
    for values in (
        (0.1, 0.2, 0.7, 0.3, 0.3),
        (0.6, 0.1, 0.6, 0.2, 0.2),
        (0.3, 0.5, 0.5, 0.1, 0.1),
        (0.2, 0.4, 0.4, 0.9, 0.0),
    )
]


@pytest.mark.parametrize(
    ("metric", "best_epoch"),
    [("mean_class_ap50", 2), ("map50", 3), ("ap50_white", 4), ("pooled_ap50", 1)],
)
def test_best_pt_follows_the_select_metric(
    metric: str, best_epoch: int, easy_data: Path, tmp_path: Path, monkeypatch
):
    fake_loop(monkeypatch, metrics=EPOCH_METRICS)
    run = train(tiny_config(easy_data, tmp_path, optim__epochs=4, run__select_metric=metric))
    best = load_checkpoint(run / "weights" / "best.pt")
    assert best["epoch"] == best_epoch
    assert best["metrics"] == EPOCH_METRICS[best_epoch - 1]
    assert bias_step(run / "weights" / "best.pt") == 2 * best_epoch  # that epoch's weights
    assert bias_step(run / "weights" / "last.pt") == 8
    state = load_checkpoint(run / "weights" / "last.pt")["state"]
    assert state["best"] == max(m[metric] for m in EPOCH_METRICS)


@pytest.mark.parametrize(
    ("metric", "best_epoch"),
    [("mean_class_ap50", 2), ("map50", 3), ("ap50_white", None), ("pooled_ap50", None)],
)
def test_an_early_best_picked_on_few_boxes_is_flagged(
    metric: str, best_epoch: int | None, easy_data: Path, tmp_path: Path, monkeypatch, capsys
):
    """The validation split has 3 boxes per class. Picked by mean per-class AP50 (epoch 2 of 4)
    or by COCO's mAP50, also a mean over classes (epoch 3), best.pt is an earlier validation
    than the last: the run warns, naming both epochs' figures and the classes' box counts.
    Picked by a class whose best is the last epoch, or by the pooled AP50 (every box counts
    once; its best is epoch 1), it stays silent."""
    fake_loop(monkeypatch, metrics=EPOCH_METRICS)
    train(tiny_config(easy_data, tmp_path, optim__epochs=4, run__select_metric=metric))
    text = " ".join(capsys.readouterr().err.split())
    assert ("not the last validation" in text) is (best_epoch is not None)
    if best_epoch is not None:
        assert f"best.pt is epoch {best_epoch}, not the last validation (epoch 4)" in text
        assert "white (3), black (3)" in text
        ap = EPOCH_METRICS[best_epoch - 1]["mean_class_ap50"]
        assert f"epoch {best_epoch} mean_class_ap50 {ap:.3f}; epoch 4 mean_class_ap50 0.2" in text


def test_select_last_keeps_the_last_validated_epoch(
    easy_data: Path, tmp_path: Path, monkeypatch, capsys
):
    """--select-metric last with --eval-interval 2 over 5 epochs: best.pt follows each
    validation (2, 4 and the final 5), whatever the metrics say (epoch 2 has the highest mean
    per-class AP50 here, on 3 boxes a class: no early-pick warning, as nothing was picked early)."""
    fake_loop(monkeypatch, metrics=[*EPOCH_METRICS, EPOCH_METRICS[3]])
    cfg = tiny_config(easy_data, tmp_path, optim__epochs=5, run__select_metric="last")
    cfg.run.eval_interval = 2
    run = train(cfg)
    best = load_checkpoint(run / "weights" / "best.pt")
    assert best["epoch"] == 5 and best["metrics"] == EPOCH_METRICS[3]
    assert bias_step(run / "weights" / "best.pt") == 10  # the final weights
    state = load_checkpoint(run / "weights" / "last.pt")["state"]
    assert (state["best_epoch"], state["best"]) == (5, 5)
    text = " ".join(capsys.readouterr().out.split())
    assert "best.pt is the last validated epoch 5" in text
    assert "not the last validation" not in text


def test_select_last_refuses_patience(easy_data: Path, tmp_path: Path):
    """--patience counts validations without gain in the select metric; last ranks none."""
    args = ["--select-metric", "last", "--patience", 3]
    result = cli("train", *cli_args(easy_data, tmp_path), *args, code=2)
    text = " ".join(result.output.split())
    assert "--patience" in text and "--select-metric last" in text


def test_early_pick_caveat_needs_few_boxes_and_an_earlier_validation():
    rows = [
        {"epoch": 1, "ap50_crack": 0.8, "auroc": 0.9},
        {"epoch": 2},  # not validated (--eval-interval)
        {"epoch": 3, "ap50_crack": 0.5, "auroc": 0.8},
    ]
    few, many = {"scratch": 200, "crack": 6}, {"scratch": 200, "crack": 40}
    text = early_pick_caveat(rows, "ap50_crack", 1, few)
    assert text is not None and "crack (6)" in text and "scratch" not in text
    assert "epoch 1 auroc 0.900; epoch 3 auroc 0.800" in text
    assert early_pick_caveat(rows, "ap50_crack", 1, many) is None
    assert early_pick_caveat(rows, "ap50_scratch", 1, few) is None
    assert early_pick_caveat(rows, "ap50_crack", 3, few) is None
    assert early_pick_caveat(rows, "auroc", 1, few) is None  # every image informs it


# ---------------------------------------------------------------------------- snapshots
@pytest.mark.parametrize(("period", "kept"), [(0, []), (2, [2, 4]), (3, [3])])
def test_save_period_keeps_every_nth_epoch_with_its_weights_and_metrics(
    period: int, kept: list[int], easy_data: Path, tmp_path: Path, monkeypatch
):
    """4 epochs validated at epochs 3 and 4 (--eval-interval 3, and the last): epochN.pt holds
    the weights of the end of epoch N (global step 2N) and its validation's metrics, none for an
    epoch without one; no snapshots at --save-period 0 (the default). ``evaluate`` reads a
    snapshot as it reads best.pt."""
    fake_loop(monkeypatch, metrics=EPOCH_METRICS)
    cfg = tiny_config(easy_data, tmp_path, optim__epochs=4, run__save_period=period)
    cfg.run.eval_interval = 3
    run = train(cfg)
    names = sorted(p.name for p in (run / "weights").iterdir())
    assert names == sorted(["best.pt", "last.pt", *(f"epoch{n}.pt" for n in kept)])
    for n in kept:
        snapshot = load_checkpoint(run / "weights" / f"epoch{n}.pt")
        assert snapshot["epoch"] == n and bias_step(run / "weights" / f"epoch{n}.pt") == 2 * n
        assert snapshot["metrics"] == (EPOCH_METRICS[n - 1] if n >= 3 else {})
        assert "optimizer" not in snapshot  # inference weights, not a resume point
    if kept:
        cli("evaluate", easy_data, "-w", run / "weights" / f"epoch{kept[-1]}.pt", code=0)


# ---------------------------------------------------------------------------- compare resume
def test_compare_resumes_an_interrupted_variant(easy_data: Path, tmp_path: Path, monkeypatch):
    """A variant stopped at global step 3 (of 4) is resumed where it stopped, in its own
    folder: only step 4 runs; a finished variant runs no step at all."""
    from defectdet.engine.compare import run as cmp
    from defectdet.engine.compare.variants import parse_variant

    study = tmp_path / "study"
    base = tiny_config(easy_data, tmp_path, optim__epochs=2)
    ((_, name, cfg),) = cmp.variant_configs(base, [parse_variant("loss=ce")], study)
    steps: list[int] = []

    def note(trainer):
        steps.append(trainer.state["global_step"])
        if steps == [0, 1, 2]:
            trainer._stop_requested = True  # Ctrl-C during the third step of the first run

    fake_loop(monkeypatch, before_step=note)
    with pytest.raises(Interrupted):
        cmp._train_or_resume(cfg, study / name)
    assert steps == [0, 1, 2]
    assert cmp._train_or_resume(cfg, study / name) == study / name
    assert steps == [0, 1, 2, 3]  # continued at global step 3: not restarted from 0
    state = load_checkpoint(study / name / "weights" / "last.pt")["state"]
    assert state["finished"] and state["global_step"] == 4
    assert list(pd.read_csv(study / name / "metrics.csv")["epoch"]) == [1, 2]
    assert os.listdir(study) == [name]  # the same run folder, not a new one
    cmp._train_or_resume(cfg, study / name)
    assert steps == [0, 1, 2, 3]  # finished: not trained again
