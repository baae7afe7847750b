"""Faults (issue 7): a training process killed with SIGKILL or stopped with a real Ctrl-C resumes
to the same final weights as an uninterrupted run; a read-only folder or a full disk gives a
clear error naming the path and leaves earlier outputs byte for byte intact; an atomic write that
fails half-way leaves the old file and no temporary file."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from defectdet.engine.train.loop import train
from defectdet.errors import DefectdetError
from defectdet.io import atomic_open, write_json
from defectdet.model import load_checkpoint, save_checkpoint
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


@pytest.fixture(scope="module")
def runs(easy: Path, tmp_path_factory) -> Iterator[dict[str, tuple[int, str, Path]]]:
    """Two ``python -m defectdet train`` processes, one killed with SIGKILL and one sent SIGINT
    (Ctrl-C) as soon as epoch 1 has written last.pt (atomically), while the uninterrupted
    reference run trains in this process. One thread everywhere: the same arithmetic, and three
    runs on two cores do not fight over threads. Name → (exit code, output, run folder)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "200"}
    folders = {name: tmp_path_factory.mktemp(name) for name in ("kill", "ctrl-c", "reference")}
    procs = {}
    try:
        for name in ("kill", "ctrl-c"):
            args = ["-m", "defectdet", "train", *train_args(easy, folders[name] / "runs")]
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
def test_full_disk_during_training_keeps_the_last_good_checkpoint(
    easy: Path, tmp_path: Path, monkeypatch
):
    before = no_space_for("last.pt", monkeypatch)  # epoch 1 saves; epoch 2 finds the disk full
    last = tmp_path / "exp" / "weights" / "last.pt"
    args = train_args(easy, tmp_path, epochs=2, batch=8)
    cli("train", *args, code=1, says=(f"cannot write {last}: No space left on device",))
    assert last.read_bytes() == before["last.pt"]
    assert load_checkpoint(last)["epoch"] == 1
    assert sorted(os.listdir(last.parent)) == ["best.pt", "last.pt"]


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

    def torn_save(obj, fh, *args, **kwargs):
        fh.write(b"PK\x03\x04 half a zip")
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(DefectdetError, match=r"cannot write .*last\.pt: Input/output error"):
        save_checkpoint(tmp_path / "last.pt", {"model": {"w": torch.zeros(3)}})
    with pytest.raises(TypeError):
        write_json(tmp_path / "r.json", {"a": object()})  # fails half-way through json.dump
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
