"""Faults (issue 7): a training process killed with SIGKILL or stopped with a real Ctrl-C resumes
to the same final weights as an uninterrupted run; a read-only folder or a full disk gives a
clear error naming the path and leaves earlier outputs byte for byte intact; an atomic write that
fails half-way leaves the old file and no temporary file.

"Full disk" is simulated two ways: the rename onto the target fails (:func:`no_space_for`), or the
write itself runs out of room part-way (:func:`disk_fills_in`: the write that crosses the room
left writes what fits and raises ENOSPC), and, as a real file-system refusal, a file-size limit
(``RLIMIT_FSIZE``: the kernel fails the write with EFBIG part-way)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import defectdet.engine.predict.writers as predict_writers
from defectdet.engine.train.history import History
from defectdet.engine.train.loop import train
from defectdet.errors import DefectdetError
from defectdet.io import atomic_open, write_json, write_text
from defectdet.model import load_checkpoint, save_checkpoint
from detector_helpers import make_checkpoint, predict_options, run_predict, write_images
from test_hardening import cli
from test_train import make_easy_dataset

EPOCHS = 2


def train_args(data: Path, project: Path, epochs: int = EPOCHS, batch: int = 4) -> list[str]:
    """8 training images, 2 steps an epoch; augmentation on, so RNG state must resume too."""
    options = (
        f"--epochs {epochs} --eval-interval {epochs} --batch-size {batch} --image-size 64 "
        "--fpn-channels 32 --head-convs 1 --levels 3-5 --workers 0 --augment light "
        "--optimizer adamw --lr 0.001 --warmup-iters 5 --seed 0"
    )
    return [str(data), "--project", str(project), *options.split()]


@pytest.fixture(scope="module")
def easy(tmp_path_factory) -> Path:
    return make_easy_dataset(tmp_path_factory.mktemp("easy"))


#: Global step after which the "kill-mid-epoch" process SIGKILLs itself: the first step of
#: epoch 2 (2 steps an epoch), so the step is lost with the process and last.pt is epoch 1's.
KILL_AT_STEP = 3

#: ``python -c`` program: ``defectdet train ARGS`` that SIGKILLs itself (no clean-up runs: no
#: handler, no finally) right after optimiser step KILL_AT_STEP, in the middle of an epoch.
KILL_MID_EPOCH = f"""
import os, signal, sys
from defectdet.cli import app
from defectdet.engine.train import loop

step = loop.Trainer._step

def step_then_die(self, images, targets):
    parts = step(self, images, targets)
    if self.state["global_step"] == {KILL_AT_STEP}:
        print("SIGKILL after global step", self.state["global_step"], flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    return parts

loop.Trainer._step = step_then_die
app(["train", *sys.argv[1:]])
"""


@pytest.fixture(scope="module")
def runs(easy: Path, tmp_path_factory) -> Iterator[dict[str, tuple[int, str, Path]]]:
    """Three ``defectdet train`` processes: one killed with SIGKILL and one sent SIGINT (Ctrl-C)
    as soon as epoch 1 has written last.pt (atomically), and one that SIGKILLs itself in the
    middle of epoch 2, while the uninterrupted reference run trains in this process. One
    thread everywhere: the same arithmetic, and four runs on two cores do not fight over
    threads. Name → (exit code, output, run folder)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "200"}
    names = ("kill", "ctrl-c", "kill-mid-epoch", "reference")
    folders = {name: tmp_path_factory.mktemp(name) for name in names}
    procs = {}
    try:
        for name in ("kill", "ctrl-c", "kill-mid-epoch"):
            args = train_args(easy, folders[name] / "runs")
            if name == "kill-mid-epoch":
                args = ["-c", KILL_MID_EPOCH, *args]
            else:
                args = ["-m", "defectdet", "train", *args]
            with (folders[name] / "train.log").open("w") as log:
                procs[name] = subprocess.Popen(
                    [sys.executable, *args], stdout=log, stderr=subprocess.STDOUT, env=env
                )
        problems: list[str] = []
        watcher = threading.Thread(target=signal_after_epoch_1, args=(procs, folders, problems))
        watcher.start()
        try:
            reference = cli("train", *train_args(easy, folders["reference"] / "runs"), code=0)
        finally:
            watcher.join()
        assert not problems, problems
        outputs = {name: (folders[name] / "train.log").read_text() for name in procs}
        outputs["reference"] = reference.output
        codes = {name: p.returncode for name, p in procs.items()} | {"reference": 0}
        yield {n: (codes[n], outputs[n], folders[n] / "runs" / "exp") for n in folders}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
        torch.set_num_threads(threads)


def signal_after_epoch_1(procs: dict, folders: dict, problems: list[str]) -> None:
    pending = {"kill": signal.SIGKILL, "ctrl-c": signal.SIGINT}
    end = time.monotonic() + 300
    while any(p.poll() is None for p in procs.values()):
        if time.monotonic() > end:
            problems.append("training processes still running after 300 s")
            for p in procs.values():
                p.kill()
        for name, sig in list(pending.items()):
            if (folders[name] / "runs" / "exp" / "weights" / "last.pt").exists():
                if procs[name].poll() is not None:
                    problems.append(f"{name}: training finished before the signal")
                procs[name].send_signal(sig)
                del pending[name]
        time.sleep(0.02)
    if pending:
        problems.append(f"no checkpoint from {', '.join(pending)} before the process ended")


def assert_same_weights(run: Path, reference: Path) -> None:
    a = load_checkpoint(reference / "weights" / "last.pt")
    b = load_checkpoint(run / "weights" / "last.pt")
    assert a["state"]["global_step"] == b["state"]["global_step"] == 2 * EPOCHS
    assert a["model"].keys() == b["model"].keys()
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_weights_of_an_uninterrupted_run(runs):
    code, log, run = runs["kill"]
    assert code == -signal.SIGKILL, log
    assert load_checkpoint(run / "weights" / "last.pt")["state"]["epoch"] < EPOCHS  # cut short
    assert_same_weights(train(resume=run), runs["reference"][2])


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_redoes_the_lost_steps_exactly(runs):
    """SIGKILL in the middle of an epoch: the steps done since the last checkpoint die with the
    process; last.pt is still the end of epoch 1 (written whole), and --resume redoes epoch 2
    to the weights of the uninterrupted run."""
    code, log, run = runs["kill-mid-epoch"]
    assert code == -signal.SIGKILL, log
    assert f"SIGKILL after global step {KILL_AT_STEP}" in log  # died mid-epoch 2
    state = load_checkpoint(run / "weights" / "last.pt")["state"]
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 0, 2)
    assert not state["finished"]
    assert sorted(os.listdir(run / "weights")) == ["best.pt", "last.pt"]  # no partial file
    assert_same_weights(train(resume=run), runs["reference"][2])


@pytest.mark.slow
def test_ctrl_c_exits_130_with_a_resumable_checkpoint(runs):
    code, log, run = runs["ctrl-c"]
    assert code == 130, log
    assert "Traceback" not in log
    assert f"continue with: defectdet train --resume {run}" in log.replace("\n", "")
    state = load_checkpoint(run / "weights" / "last.pt")["state"]
    assert 2 <= state["global_step"] <= 2 * EPOCHS  # saved where Ctrl-C landed, in epoch 2
    assert_same_weights(train(resume=run), runs["reference"][2])


# ---------------------------------------------------------------------------- full disk
def no_space_for(name: str, monkeypatch) -> dict[str, bytes]:
    """Make the rename onto an existing ``name`` fail with ENOSPC (the disk filled up), after
    noting what that file held."""
    real_replace, before = os.replace, {}

    def replace(src, dst, *args, **kwargs):
        dst = Path(dst)
        if dst.name == name and dst.exists():
            before[name] = dst.read_bytes()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    return before


class FillingFile:
    """A file on a disk that fills up: the write that crosses ``room`` bytes (characters in text
    mode) writes what still fits, then raises ENOSPC, and so does every later write."""

    def __init__(self, fh, room: int, when_full=None) -> None:
        self._fh, self._room, self._when_full = fh, room, when_full

    def write(self, data):
        if len(data) > self._room:
            if self._room:
                self._fh.write(data[: self._room])
            self._room = 0
            if self._when_full is not None:
                self._when_full()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._fh.write(data)

    def __getattr__(self, name: str):
        return getattr(self._fh, name)

    def __iter__(self):
        return iter(self._fh)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._fh.close()


def disk_fills_in(
    name: str, room: int, monkeypatch, replacing: bool = False, when_full=None
) -> dict[str, bytes]:
    """Writing a file called ``name`` runs out of space after ``room`` bytes: atomic writes (the
    temporary file ``atomic_open`` makes for it) and predict's streamed files alike. With
    ``replacing``, only a write that would replace an existing ``name`` fails; the returned
    dict then gets what that file held. ``when_full()`` runs as the disk fills."""
    real_mkstemp, real_fdopen, filling, before = tempfile.mkstemp, os.fdopen, set(), {}

    def mkstemp(*args, prefix=None, dir=None, **kwargs):
        fd, tmp = real_mkstemp(*args, prefix=prefix, dir=dir, **kwargs)
        target = Path(dir) / name
        if prefix == f".{name}." and (target.exists() or not replacing):
            if target.exists():
                before[name] = target.read_bytes()
            filling.add(fd)
        return fd, tmp

    def fdopen(fd, *args, **kwargs):
        fh = real_fdopen(fd, *args, **kwargs)
        return FillingFile(fh, room, when_full) if fd in filling else fh

    def stream_open(file, *args, **kwargs):
        fh = open(file, *args, **kwargs)  # noqa: SIM115 (returned open)
        return FillingFile(fh, room, when_full) if Path(file).name == name else fh

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "fdopen", fdopen)
    monkeypatch.setattr(predict_writers, "open", stream_open, raising=False)
    return before


def file_size_limit(limit: int):
    """A real file-system refusal part-way through a write: the kernel fails any write past
    ``limit`` bytes of a file with EFBIG (RLIMIT_FSIZE; SIGXFSZ ignored so the write returns
    the error instead of killing the process). A context manager; restores both."""
    resource = pytest.importorskip("resource")

    class Limit:
        def __enter__(self):
            self.previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            self.soft, self.hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, self.hard))

        def __exit__(self, *exc):
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.soft, self.hard))
            signal.signal(signal.SIGXFSZ, self.previous)

    return Limit()


#: Writers of the files the README promises are "written to a temporary file and renamed":
#: name → a function writing new content there (large enough to cross the room left).
ATOMIC_WRITERS = {
    "last.pt": lambda path: save_checkpoint(path, {"model": {"w": torch.arange(50_000.0)}}),
    "report.json": lambda path: write_json(path, {"classes": list(range(50_000))}),
    "compare.md": lambda path: write_text(path, "| variant |\n" * 20_000),
    "metrics.csv": lambda path: write_metrics(path, rows=5_000),
}


def write_metrics(path: Path, rows: int) -> None:
    history = History(path.parent, ["white", "black"])
    for epoch in range(rows):
        history.append({"epoch": epoch + 1, "train_loss": 1 / (epoch + 1), "map50": 0.5})
    history.write()


def good_file(folder: Path, name: str) -> tuple[Path, bytes]:
    target = folder / name
    if name == "metrics.csv":
        write_metrics(target, rows=2)
    elif name == "last.pt":
        save_checkpoint(target, {"model": {"w": torch.ones(3)}})
    else:
        write_text(target, "the earlier, complete content")
    return target, target.read_bytes()


@pytest.mark.parametrize("how", ["enospc", "rlimit"])
@pytest.mark.parametrize("name", list(ATOMIC_WRITERS))
def test_disk_full_mid_write_keeps_the_earlier_file(name: str, how: str, tmp_path, monkeypatch):
    """The write itself fails part-way (not only the rename): the earlier file is intact and
    the partial temporary file is gone."""
    target, before = good_file(tmp_path, name)
    write = ATOMIC_WRITERS[name]
    if how == "enospc":
        disk_fills_in(name, 4096, monkeypatch)
        with pytest.raises(Exception):  # noqa: B017 (the message: the test below)
            write(target)
    else:
        with pytest.raises(Exception), file_size_limit(16_384):  # noqa: B017
            write(target)
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == [name]


@pytest.mark.parametrize(
    "name",
    [
        "last.pt",
        "report.json",
        "compare.md",
        "metrics.csv",
    ],
)
def test_disk_full_mid_write_is_one_clear_error(name: str, tmp_path, monkeypatch):
    target, _ = good_file(tmp_path, name)
    disk_fills_in(name, 4096, monkeypatch)
    with pytest.raises(DefectdetError) as info:
        ATOMIC_WRITERS[name](target)
    assert str(info.value) == f"cannot write {target}: No space left on device"
    assert info.value.exit_code == 1


@pytest.mark.parametrize("command", ["analyze", "convert"])
def test_full_disk_keeps_the_earlier_report(command: str, easy: Path, tmp_path: Path, monkeypatch):
    out = tmp_path / "report.json"
    args = {
        "analyze": ["analyze", easy, "--json", out],
        "convert": ["convert", easy, out, "--overwrite"],
    }[command]
    cli(*args, code=0)
    before = no_space_for("report.json", monkeypatch)
    cli(*args, code=1, says=(f"cannot write {out}: No space left on device",))
    assert out.read_bytes() == before["report.json"]
    assert os.listdir(tmp_path) == ["report.json"]  # no temporary file left behind


@pytest.mark.slow
@pytest.mark.parametrize(
    "where",
    [
        "rename",
        "mid-write",
    ],
)
def test_full_disk_during_training_keeps_the_last_good_checkpoint(
    where: str, easy: Path, tmp_path: Path, monkeypatch
):
    last = tmp_path / "exp" / "weights" / "last.pt"
    before = {}
    if where == "rename":
        before = no_space_for("last.pt", monkeypatch)  # epoch 1 saves; epoch 2: disk full
    else:  # epoch 1 saves; epoch 2's last.pt fills the disk half-way through torch.save
        before = disk_fills_in("last.pt", 4096, monkeypatch, replacing=True)
    args = train_args(easy, tmp_path, epochs=2, batch=8)
    cli("train", *args, code=1, says=(f"cannot write {last}: No space left on device",))
    assert last.read_bytes() == before["last.pt"]
    assert load_checkpoint(last)["epoch"] == 1
    assert sorted(os.listdir(last.parent)) == ["best.pt", "last.pt"]


# ---------------------------------------------------------------------------- full disk, predict
PREDICT = {"workers": 0, "device": "cpu", "progress": False, "conf": 0.3, "batch_size": 2}
PREDICT_ARGS = ["--workers", "0", "--device", "cpu", "--conf", "0.3", "--batch-size", "2"]


@pytest.fixture(scope="module")
def predicted(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(source, weights, reference): 6 images predicted in 3 batches of 2 by a complete run."""
    root = tmp_path_factory.mktemp("predict")
    weights = make_checkpoint(root / "best.pt")
    write_images(root / "in", 6)
    run_predict(root / "in", predict_options(weights, root / "reference", **PREDICT))
    return root / "in", weights, root / "reference"


def first_batch_bytes(reference: Path, name: str) -> int:
    """Bytes of the CSV ``name`` once the first batch (000.png, 001.png) is written: its
    header and the rows of those two images, counted from the complete run's file."""
    header, *rows = (reference / name).read_bytes().splitlines(keepends=True)
    return len(header) + sum(len(r) for r in rows if r.split(b",")[0] in (b"000.png", b"001.png"))


def temp_files(folder: Path) -> list[str]:
    return [f for f in os.listdir(folder) if f.endswith(".tmp")]


@pytest.mark.parametrize("name", ["predictions.csv", "images.csv"])
def test_disk_full_mid_predict_keeps_the_finished_batches(
    name: str, predicted, tmp_path: Path, monkeypatch
):
    """The CSVs are streamed: when the disk fills during batch 2, every row of batch 1 is on
    disk exactly as a complete run writes it; no predictions.json or summary.json claims a
    complete run."""
    source, weights, reference = predicted
    out, csvs = tmp_path / "out", ("predictions.csv", "images.csv")
    on_disk = {}  # what the files hold when the disk fills (no close() has flushed them yet)
    room = first_batch_bytes(reference, name) + 10  # the disk fills in the second batch
    disk_fills_in(
        name,
        room,
        monkeypatch,
        when_full=lambda: on_disk.update({n: (out / n).read_bytes() for n in csvs}),
    )
    with pytest.raises((OSError, DefectdetError)):  # which one: the CLI test below
        run_predict(source, predict_options(weights, out, **PREDICT))
    assert len((out / name).read_bytes()) == room  # it did stop part-way through batch 2
    for csv_name in csvs:
        full, batch_1 = (reference / csv_name).read_bytes(), first_batch_bytes(reference, csv_name)
        # batch 1 was flushed to the file before batch 2 ran:
        assert full.startswith(on_disk[csv_name]) and len(on_disk[csv_name]) >= batch_1
        got = (out / csv_name).read_bytes()
        assert full.startswith(got) and len(got) >= batch_1  # a complete run, cut short
    assert not (out / "predictions.json").exists() and not (out / "summary.json").exists()
    assert not temp_files(out)


@pytest.mark.parametrize("name", ["predictions.json", "summary.json"])
def test_disk_full_at_the_end_of_predict_keeps_the_streamed_results(
    name: str, predicted, tmp_path: Path, monkeypatch
):
    """predictions.json and summary.json are written atomically at the end: a full disk then
    leaves no partial file, and the CSVs (and predictions.json, when the summary fails) are
    complete."""
    source, weights, reference = predicted
    disk_fills_in(name, 100, monkeypatch)
    out = tmp_path / "out"
    with pytest.raises(DefectdetError, match=f"cannot write {out / name}: No space left"):
        run_predict(source, predict_options(weights, out, **PREDICT))
    complete = ["predictions.csv", "images.csv"]
    complete += ["predictions.json"] if name == "summary.json" else []
    for done in complete:
        assert (out / done).read_bytes() == (reference / done).read_bytes(), done
    assert not (out / name).exists() and not temp_files(out)


@pytest.mark.parametrize(
    "name",
    [
        "predictions.csv",
        "images.csv",
        "predictions.json",
        "summary.json",
    ],
)
def test_disk_full_in_predict_is_one_clear_error(name: str, predicted, tmp_path, monkeypatch):
    source, weights, reference = predicted
    room = first_batch_bytes(reference, name) + 10 if name.endswith(".csv") else 100
    disk_fills_in(name, room, monkeypatch)
    out = tmp_path / "out"
    says = (f"cannot write {out / name}: No space left on device",)
    cli("predict", source, "-w", weights, "--out", out, *PREDICT_ARGS, code=1, says=says)


# ---------------------------------------------------------------------------- read-only
def read_only(folder: Path, how: str, monkeypatch) -> None:
    """``chmod 555`` (needs a non-root user), or the same refusal simulated at the system-call
    level (what a read-only mount does), so it is tested as root too."""
    if how == "chmod":
        folder.chmod(0o555)
        if os.access(folder, os.W_OK):
            folder.chmod(0o755)
            pytest.skip("running as root: chmod 555 does not stop writes")
        return
    real_open, real_mkdir = os.open, os.mkdir

    def refuse(real):
        def call(path, *args, **kwargs):
            if str(Path(path).parent).startswith(str(folder)):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real(path, *args, **kwargs)

        return call

    monkeypatch.setattr(os, "open", refuse(real_open))
    monkeypatch.setattr(os, "mkdir", refuse(real_mkdir))


@pytest.mark.parametrize("how", ["chmod", "simulated"])
@pytest.mark.parametrize("command", ["analyze", "convert", "train"])
def test_read_only_output_folder(command: str, how: str, easy: Path, tmp_path: Path, monkeypatch):
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "report.json"
    out.write_text('{"earlier": true}')
    args = {
        "analyze": ["analyze", easy, "--json", out],
        "convert": ["convert", easy, out, "--overwrite"],
        "train": ["train", *train_args(easy, folder, epochs=1)],
    }[command]
    says = {
        "analyze": f"cannot write {out}",
        "convert": f"cannot write {out}",
        "train": f"cannot create folder {folder / 'exp'}",
    }[command]
    read_only(folder, how, monkeypatch)
    try:
        cli(*args, code=1, says=(says, "Permission denied"))
    finally:
        folder.chmod(0o755)
    assert out.read_text() == '{"earlier": true}'
    assert os.listdir(folder) == ["report.json"]


# ---------------------------------------------------------------------------- atomic writes
def fail_in_body(fh, monkeypatch, exc):
    fh.write(b"half of the new content")
    raise exc


def fail_at_fsync(fh, monkeypatch, exc):
    fh.write(b"all of the new content")

    def fsync(fd):
        raise exc

    monkeypatch.setattr(os, "fsync", fsync)


def fail_at_rename(fh, monkeypatch, exc):
    fh.write(b"all of the new content")

    def replace(*args):
        raise exc

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("where", [fail_in_body, fail_at_fsync, fail_at_rename])
@pytest.mark.parametrize(
    ("exc", "raised"),
    [
        (RuntimeError("boom"), RuntimeError),
        (KeyboardInterrupt(), KeyboardInterrupt),
        (OSError(errno.ENOSPC, "No space left on device"), DefectdetError),
    ],
)
def test_atomic_open_failure_leaves_the_old_file_and_no_temp_file(
    tmp_path: Path, monkeypatch, where, exc, raised
):
    target = tmp_path / "last.pt"
    target.write_bytes(b"the old content")
    with pytest.raises(raised) as info, atomic_open(target, "wb") as fh:
        where(fh, monkeypatch, exc)
    monkeypatch.undo()
    if raised is DefectdetError:
        assert str(target) in str(info.value) and "No space left" in str(info.value)
    assert target.read_bytes() == b"the old content"
    assert os.listdir(tmp_path) == ["last.pt"]


def test_checkpoint_and_report_writers_are_atomic(tmp_path: Path, monkeypatch):
    save_checkpoint(tmp_path / "last.pt", {"model": {"w": torch.ones(3)}})
    write_json(tmp_path / "r.json", {"a": 1})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def torn_sync(fd):  # the bytes went out, the device failed to keep them
        raise OSError(errno.EIO, "Input/output error")

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", torn_sync)
        with pytest.raises(DefectdetError, match=r"cannot write .*last\.pt: Input/output error"):
            save_checkpoint(tmp_path / "last.pt", {"model": {"w": torch.zeros(3)}})
    with pytest.raises(TypeError):
        write_json(tmp_path / "r.json", {"a": object()})  # fails half-way through json.dump
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
