"""The engine: a run killed with SIGKILL and resumed ends exactly like an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time

from conftest import ROOT, assert_clean_failure, run_cli

FT = "task1/vit_gpt2_finetuned.py"


def train_args(synth, out, epochs=4):
    return [FT, "--model", synth / "models" / "vit-gpt2", "--data-dir", synth, "--output-dir", out,
            "--epochs", str(epochs), "--batch-size", "4", "--lr", "2e-3", "--workers", "0", "--preset", "greedy",
            "--max-new-tokens", "12", "--patience", "0", "--eval-every", "2", "--limit", "48"]


def test_sigkill_then_resume_matches_uninterrupted(synth, tmp_path):
    clean = run_cli(*train_args(synth, tmp_path / "a"))
    assert clean.returncode == 0, clean.stderr[-3000:]
    out = tmp_path / "b"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, *map(str, train_args(synth, out))], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = out / "checkpoint" / "latest.json"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if latest.exists() and json.loads(latest.read_text())["dir"] >= "epoch-0002":
            break
        time.sleep(0.02)
    time.sleep(0.3)  # into epoch 3
    assert proc.poll() is None, "run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "metrics.json").exists()
    again = run_cli(*train_args(synth, out))  # without --resume: refuses to touch the unfinished run
    assert_clean_failure(again, "--resume")
    resumed = run_cli(*train_args(synth, out), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming after epoch" in resumed.stdout
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((out / "metrics.json").read_text())
    assert a["valid"] == b["valid"] and a["test"] == b["test"]
    la = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lb] == [1, 2, 3, 4]
    assert [r["train_loss"] for r in la] == [r["train_loss"] for r in lb]


def test_finished_run_is_not_overwritten(synth, tmp_path):
    out = tmp_path / "r"
    first = run_cli(*train_args(synth, out, epochs=1))
    assert first.returncode == 0, first.stderr[-2000:]
    before = (out / "metrics.json").read_bytes()
    second = run_cli(*train_args(synth, out, epochs=1))
    assert_clean_failure(second, "already holds a finished run")
    assert (out / "metrics.json").read_bytes() == before


def test_training_on_a_cpu_flushes_denormal_floats():
    """Denormals (AdamW's decaying second moments) made the demo's CPU epochs 2.5x slower as training went on:
    the accelerator a run trains with flushes them to zero on a CPU."""
    import torch

    from captioning.config import TrainConfig
    from captioning.engine import make_accelerator

    torch.set_flush_denormal(False)
    tiny = torch.tensor([1e-39])
    assert (tiny * 1.0).item() != 0.0  # this CPU keeps denormals unless told otherwise
    make_accelerator(TrainConfig())
    assert (tiny * 1.0).item() == 0.0
