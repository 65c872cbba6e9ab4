"""Every script under `accelerate launch` with 2 CPU processes (gloo) gives what one process gives.

--batch-size is the global batch (split_batches): each process takes half of every batch and DDP
averages the gradients, so the two runs see the same data in the same order and take the same steps;
a loss averages over both processes' caption tokens (distributed.global_mean), and SCST's samples
are seeded per image. Validation and test are split into contiguous shares of whole batches and
gathered in order; the caption command deals its files round-robin in runs of --batch-size. The
tiny models' dropout is switched off for this test (two processes draw different dropout masks than
one). All jobs of one side run in one process (pair):
tests/multiprocess_driver.py, so the imports are paid once.
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


def photos(synth: Path, folder: Path) -> Path:
    """A folder for the caption command: 18 test images, then 2 files it skips (last, so that one process
    and two form the same batches: a skip shifts one process's later batches, and batch size can change a
    title by rounding)."""
    folder.mkdir()
    for f in sorted((synth / "images").glob("*.jpg"))[:18]:
        shutil.copy(f, folder / f.name)
    (folder / "zz-empty.jpg").write_bytes(b"")
    (folder / "zz-text.jpg").write_text("Title,Image_Name\nnot,a picture\n")
    return folder


def plan(models: dict, synth: Path, out: Path, cache: Path, trained: Path, folder: Path) -> list[dict]:
    """The jobs both runs make: three trainers (loss averaged over every process's tokens or samples),
    three captioners (each process a share of the batches) and the caption command over `folder`, on tiny
    data, dropout off. The captioners that read a trained run read the one-process side's (`trained`)."""
    common = ["--data-dir", synth, "--cache-dir", cache, "--workers", "0", "--preset", "greedy",
              "--max-new-tokens", "8", "--batch-size", "8", "--seed", "5"]
    train = ["--mixed-precision", "no", "--patience", "0", "--limit", "24"]
    vg = models["vit-gpt2"]
    jobs = {
        "full": (FT, ["--model", vg, "--epochs", "2", "--eval-every", "2", "--lr", "2e-3", *train]),
        "frozen": (FT, ["--model", vg, "--freeze", "vit", "--epochs", "1", "--lr", "2e-3", *train]),
        "scst": ("task1/vit_gpt2_finetuned_RL.py", ["--model", vg, "--epochs", "1", "--samples", "2", "--lr", "1e-3",
                                                    *train]),
        "task2": ("task2/train.py", ["--model", models["llama"], "--vision-model", models["vit"], "--pool", "mean",
                                     "--epochs", "1", "--lr", "3e-3", *train]),
        "task1_1": ("task1/task1_1.py", ["--model", vg, "--limit", "24"]),
        "inferllama": ("task2/inferllama.py", ["--run", trained / "task2", "--split", "both", "--limit", "24"]),
        "deepseek": ("task2/deepseek.py", ["--model", models["deepseek-vl"], "--limit", "24"]),
    }
    caption = ["--model", trained / "full", folder, "--out", out / "titles.csv", "--batch-size", "4", "--top-k", "2",
               "--preset", "greedy", "--max-new-tokens", "8", "--quiet"]
    return [{"name": name, "script": script, "args": [str(a) for a in [*args, *common, "--output-dir", out / name]]}
            for name, (script, args) in jobs.items()] + [
        {"name": "caption", "module": "captioning.caption", "args": [str(a) for a in caption]}]


def cache_work(text: str) -> dict:
    """Images decoded or encoded into a cache, per split name, as the runs log them."""
    import re

    counts = {}
    for split, n, kind in re.findall(r"(\w+): (?:decoded|encoded) (\d+) images into the (pixel|feature) cache", text):
        counts[(kind, split)] = counts.get((kind, split), 0) + int(n)
    return counts


def test_two_processes_match_one(no_dropout_model, synth, tmp_path):
    """Every script as right with 2 processes as with 1: the same predictions.csv and metrics for the
    captioners, each process captioning about half of a split; the same per-epoch losses for the
    trainers (the loss of a step is the mean over both processes' tokens); every cache built once (the
    same images encoded, counted from the logs, and the same cache files as one process leaves); one
    run folder written once; SCST's reward summary printed once."""
    models = {name: synth / "models" / name for name in ("llama", "vit", "deepseek-vl")}
    models["vit-gpt2"] = no_dropout_model
    one, two = tmp_path / "one", tmp_path / "two"
    folder = photos(synth, tmp_path / "photos")
    for side in (one, two):
        side.mkdir()
        jobs = plan(models, synth, side / "runs", side / "cache", one / "runs", folder)
        (side / "plan.json").write_text(json.dumps(jobs))
    single = run_cli("tests/multiprocess_driver.py", one / "plan.json", one, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    multi = launch("tests/multiprocess_driver.py", two / "plan.json", two, timeout=600)
    assert multi.returncode == 0, (multi.stdout[-2000:], multi.stderr[-3000:])
    assert "Traceback" not in multi.stderr
    print(*(x for p in (single, multi) for x in p.stderr.splitlines() if x.startswith("driver:")), sep="\n")

    ranks = [json.loads((two / f"shares-rank{r}.json").read_text()) for r in (0, 1)]
    assert json.loads((one / "shares-rank0.json").read_text())["codes"] == ranks[0]["codes"] == ranks[1]["codes"]
    assert set(ranks[0]["codes"].values()) == {0}, ranks[0]["codes"]
    for name in ("full", "frozen", "scst", "task2", "task1_1", "inferllama", "deepseek"):
        a, b = one / "runs" / name, two / "runs" / name
        # one run folder, written once
        assert sorted(p.name for p in b.iterdir()) == sorted(p.name for p in a.iterdir()), name
        ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
        assert mb["info"]["processes"] == 2 and ma["info"]["processes"] == 1, name
        # each process captions about half: a contiguous share of whole batches
        total = json.loads((one / "shares-rank0.json").read_text())["shares"][name]
        halves = [r["shares"].get(name, 0) for r in ranks]
        assert sum(halves) == total and min(halves) >= total / 3, (name, halves)
        if name in ("task1_1", "inferllama", "deepseek"):
            for f in ("predictions.csv", "predictions_valid.csv"):
                assert (b / f).read_text() == (a / f).read_text(), (name, f)
            assert {k: ma[k] for k in ("valid", "test")} == {k: mb[k] for k in ("valid", "test")}, name
        else:
            la, lb = read_log(a), read_log(b)
            assert [r["epoch"] for r in lb] == [r["epoch"] for r in la], name
            for x, y in zip(la, lb):
                assert y["train_loss"] == pytest.approx(x["train_loss"], rel=1e-4), (name, la, lb)
    assert read_log(two / "runs" / "full")[-1]["train_loss"] < read_log(two / "runs" / "full")[0]["train_loss"]
    # the answers file holds every image's raw answer, in split order
    answers = [json.loads(x) for x in (two / "runs" / "deepseek" / "answers.jsonl").read_text().splitlines()]
    assert answers == [json.loads(x) for x in (one / "runs" / "deepseek" / "answers.jsonl").read_text().splitlines()]
    # every cache built by one process: the same images decoded/encoded as one process, the same files
    work = cache_work(multi.stderr + multi.stdout)
    assert work and work == cache_work(single.stderr + single.stdout), (work, cache_work(single.stderr))
    assert sorted(p.name for p in (two / "cache").glob("*-*")) == sorted(p.name for p in (one / "cache").glob("*-*"))
    # the final evaluation and SCST's reward summary are printed once
    assert multi.stdout.count("(test) |") == single.stdout.count("(test) |") == 7, multi.stdout[-3000:]
    assert multi.stdout.count("mean sampled cider reward") == 1, multi.stdout[-3000:]
    # the caption command: each process captions the runs of 4 files dealt to it (18 images: 10 and 8), the
    # main one alone prints the titles and writes the CSV, in one process's order, and names each skip once
    shares = [r["shares"]["caption"] for r in ranks]
    assert json.loads((one / "shares-rank0.json").read_text())["shares"]["caption"] == sum(shares) == 18
    assert shares == [10, 8], shares
    csv_one, csv_two = (side / "runs" / "titles.csv" for side in (one, two))
    assert csv_two.read_text() == csv_one.read_text() and len(csv_one.read_text().splitlines()) == 19
    printed = [[x for x in p.stdout.splitlines() if x.startswith(f"{folder}/")] for p in (single, multi)]
    assert printed[1] == printed[0] and len(printed[0]) == 18, printed
    for name, why in (("zz-empty.jpg", "empty file"), ("zz-text.jpg", "not an image")):
        line = f"skipped {folder / name}: {why}"
        assert multi.stderr.count(line) == single.stderr.count(line) == 1, (line, multi.stderr[-3000:])
    assert multi.stderr.count("captioned 18 image(s), skipped 2") == 1


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
