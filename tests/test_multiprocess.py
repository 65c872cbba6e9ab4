"""Training under `accelerate launch` with 2 CPU processes (gloo) matches one process at the same global batch.

--batch-size is the global batch (split_batches): each process takes half of every batch and DDP
averages the gradients, so the two runs see the same data in the same order and take the same steps.
The tiny model's dropout is switched off for this test (two processes draw different dropout masks
than one), and the synthetic titles all have the same number of tokens, so the mean of the two
halves' token-mean losses is the whole batch's token-mean loss.
"""
import json
import shutil
import socket
import sys
from pathlib import Path

import pytest

from conftest import run_cli

FT = "task1/vit_gpt2_finetuned.py"
EPOCHS = 2


@pytest.fixture(scope="module")
def no_dropout_model(synth, tmp_path_factory) -> Path:
    from transformers import VisionEncoderDecoderModel

    src = synth / "models" / "vit-gpt2"
    dst = tmp_path_factory.mktemp("nodrop") / "vit-gpt2"
    model = VisionEncoderDecoderModel.from_pretrained(src)
    for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
        setattr(model.config.decoder, key, 0.0)
    model.config.encoder.hidden_dropout_prob = model.config.encoder.attention_probs_dropout_prob = 0.0
    model.save_pretrained(dst)
    for f in src.iterdir():  # tokenizer and image processor files
        if not (dst / f.name).exists():
            shutil.copy(f, dst / f.name)
    return dst


def args(model, synth, out):
    # 48 training images, 6 batches of 8 = 4 per process
    return [FT, "--model", model, "--data-dir", synth, "--output-dir", out, "--epochs", str(EPOCHS),
            "--batch-size", "8", "--lr", "2e-3", "--workers", "0", "--preset", "greedy", "--max-new-tokens", "8",
            "--patience", "0", "--limit", "48", "--mixed-precision", "no", "--eval-every", "2"]


def free_port() -> int:
    with socket.socket() as s:  # other test sessions on this machine may hold accelerate's default 29500
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(*cmd, timeout=240):
    """`accelerate launch` with 2 processes, exactly as the README shows for several GPUs."""
    return run_cli("-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
                   *cmd, timeout=timeout)


def read_log(out):
    return [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if x.strip()]


def test_two_processes_match_one(no_dropout_model, synth, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    single = run_cli(*args(no_dropout_model, synth, one))
    assert single.returncode == 0, single.stderr[-3000:]
    multi = launch(*args(no_dropout_model, synth, two))
    assert multi.returncode == 0, (multi.stdout[-2000:], multi.stderr[-3000:])
    assert "Traceback" not in multi.stderr

    # one run folder, written once: one config, one log line per epoch, one metrics.json
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    log1, log2 = read_log(one), read_log(two)
    assert [r["epoch"] for r in log2] == list(range(1, EPOCHS + 1))
    metrics = json.loads((two / "metrics.json").read_text())
    assert metrics["info"]["processes"] == 2
    assert json.loads((one / "metrics.json").read_text())["info"]["processes"] == 1
    assert set(metrics) >= {"valid", "test"}
    # the same steps: the same per-epoch loss, to float rounding (the halves' sums add up in another order)
    for a, b in zip(log1, log2):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5), (log1, log2)
    assert log2[-1]["train_loss"] < log2[0]["train_loss"]  # and it trained
    # the final evaluation ran once, in the main process only
    assert multi.stdout.count("(test) |") == 1, multi.stdout[-2000:]


def test_batch_not_divisible_by_processes_is_a_clean_error(synth, tmp_path):
    cmd = args(synth / "models" / "vit-gpt2", synth, tmp_path / "odd")
    cmd[cmd.index("--batch-size") + 1] = "7"
    cmd[cmd.index("--epochs") + 1] = "1"
    p = launch(*cmd)
    assert p.returncode != 0
    assert "must be divisible by the 2 processes" in p.stderr, p.stderr[-2000:]
    assert not (tmp_path / "odd" / "metrics.json").exists()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
