"""ViT-GPT2 training and evaluation speed: this project against the original's approach (bench/original.py).

    python bench/bench_train.py            # about 5 minutes on 2 quiet cores
    python bench/bench_train.py --quick    # a tiny model: checks the plumbing in seconds

Model: a VisionEncoderDecoder built from configs with random weights, the real architecture at reduced
depth: ViT 224 px, patch 16, width 768, 12 heads, MLP 3072 (ViT-B) with ENC_LAYERS layers, and GPT-2
width 768, 12 heads, vocabulary 50257 with DEC_LAYERS cross-attending layers. Data: synthetic dishes
saved as JPEGs at the Kaggle photos' 274x169 px, their titles as captions, a validation split one
eighth of the training split (the 80/10/10 split).

Both sides start from the same weights and train on the same images with the same targets, with the
same process-wide CPU settings (same_cpu_settings).
  ours      the recipe script itself (task1/vit_gpt2_finetuned.py main(), engine.fit timed): pixel
            cache (or, with --freeze vit, the frozen encoder's feature cache), DataLoader workers,
            fused AdamW, greedy batched validation every epoch, checkpoint every epoch, and bf16
            autocast when the CPU computes bf16 natively (--mixed-precision bf16; fp32 otherwise)
  original  bench/original.py: decode + image processor per item, no workers, full
            precision, beam-search validation one image at a time after every epoch
An epoch is the training pass plus that epoch's validation (captioning + scoring) on both sides;
ours also pays its checkpoint. Each side runs EPOCHS epochs from the same weights and its faster
epoch counts (the first pays one-time warm-ups; on a shared machine a slow epoch is mostly another
user's load); every epoch's time is reported too. The one-time cost
before ours' first epoch (loading, building the caches) is reported apart. Evaluation: captions per second of beam search (4 beams), ours as a
training run's final test evaluation (batched, in the run's precision) from a cold pixel cache (its
build included), the original one image at a time in fp32.
Utilisation: FLOPs of one training step (torch's FLOP counter: matmuls and attention) times steps
per second, as a share of this machine's measured matmul FLOP/s at the step's precision.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PHOTO_SIZE = (274, 169)  # the Kaggle dataset's photos


@dataclass
class Size:
    image: int = 224
    patch: int = 16
    width: int = 768
    heads: int = 12
    mlp: int = 3072
    enc_layers: int = 2
    dec_layers: int = 2
    vocab: int = 50257
    train: int = 256  # training images (an epoch of 16 steps)
    valid: int = 32  # validation images (train / 8)
    eval: int = 32  # images captioned for the evaluation speed
    batch: int = 16
    eval_batch: int = 32
    epochs: int = 2  # epochs on each side; the faster one counts (the first pays the warm-up)
    max_new_tokens: int = 24


QUICK = Size(image=32, patch=8, width=32, heads=2, mlp=64, enc_layers=1, dec_layers=1, vocab=600, train=24,
             valid=4, eval=4, batch=8, eval_batch=4, epochs=2, max_new_tokens=6)


# --------------------------------------------------------------------------------------- set-up
def make_photos(folder: Path, size: Size, seed: int = 0) -> list[str]:
    """JPEG dishes at the Kaggle photos' size in the standard layout (a 2-image test split for the
    training runs' final evaluation) and FOLDER/eval/test_data.csv for the evaluation speed; returns
    every title."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    from captioning.synthetic import draw_dish

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    titles = []
    (folder / "eval").mkdir(exist_ok=True)
    for split, n in (("train", size.train), ("valid", size.valid), ("test", 2), ("eval/test", size.eval)):
        rows = []
        for i in range(n):
            dish, title = draw_dish(rng)
            im = dish.resize(PHOTO_SIZE, Image.Resampling.BICUBIC)
            noise = rng.normal(0, 4, (PHOTO_SIZE[1], PHOTO_SIZE[0], 3))
            im = Image.fromarray(np.clip(np.asarray(im, dtype=float) + noise, 0, 255).astype(np.uint8))
            name = f"{split.replace('/', '-')}-{i:04d}"
            im.save(folder / "images" / f"{name}.jpg", quality=90)
            rows.append({"Title": title, "Image_Name": name})
            titles.append(title)
        pd.DataFrame(rows).to_csv(folder / f"{split}_data.csv", index=False)
    return titles


def build_model(folder: Path, size: Size, titles) -> Path:
    """Random ViT-GPT2 of `size`, saved with a tokenizer and image processor like a hub checkpoint."""
    from captioning.synthetic import build_tiny_vit_gpt2, train_tokenizer

    build_tiny_vit_gpt2(folder, train_tokenizer(titles), image_size=size.image, patch=size.patch,
                        width=size.width, enc_layers=size.enc_layers, dec_layers=size.dec_layers,
                        heads=size.heads, mlp=size.mlp, vocab=size.vocab, positions=1024)
    return folder


def same_cpu_settings() -> None:
    """Give both sides ours' process-wide CPU settings from the start: denormals flushed to zero and freed
    memory kept for reuse (engine.make_accelerator turns both on, and they stay on for the rest of the
    process). Without this, an original side measured after one of ours would run with them and one
    measured first without, so a ratio would hang on the order of the runs. The ratios therefore count
    what the code does differently, not these two settings (a ViT-B training step: 1.13 -> 0.95 s from
    the kept memory alone)."""
    import torch

    from captioning.config import keep_freed_memory

    torch.set_flush_denormal(True)
    keep_freed_memory()


def native_bf16() -> bool:
    """Whether this machine multiplies bf16 matrices natively (a bf16 GPU, or AVX512-BF16 / AMX)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def matmul_flops(dtype: str = "float32", n: int = 2048, repeats: int = 6) -> float:
    """This machine's best measured FLOP/s of an n x n matrix product."""
    import torch

    dt = getattr(torch, dtype)
    a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
    a @ b
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def step_flops(model_dir: Path, captions, size: Size) -> float:
    """FLOPs of one full fine-tuning step (forward + backward) at batch `size.batch`."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from captioning.models import encode_targets, load_vit_gpt2

    model, _, tokenizer = load_vit_gpt2(str(model_dir))
    model.train()
    labels, _ = encode_targets(tokenizer, captions[: size.batch])
    pixels = torch.randn(len(labels), 3, size.image, size.image)
    with FlopCounterMode(display=False) as counter:
        model(pixel_values=pixels, labels=labels).loss.backward()
    return float(counter.get_total_flops())


# ------------------------------------------------------------------------------------ ours
@contextlib.contextmanager
def timed_fit(record: dict):
    """Time captioning.engine.fit inside a script's main(): its start, and the end of every epoch (the
    moment its checkpoint is written, after training and validation)."""
    from captioning import engine

    fit, save = engine.fit, engine._save_checkpoint

    def timed(*args, **kwargs):
        record["fit_start"] = time.perf_counter()
        return fit(*args, **kwargs)

    def saved(*args, **kwargs):
        out = save(*args, **kwargs)
        record.setdefault("epoch_ends", []).append(time.perf_counter())
        return out

    engine.fit, engine._save_checkpoint = timed, saved
    try:
        yield record
    finally:
        engine.fit, engine._save_checkpoint = fit, save


def ours_epoch(model_dir: Path, data: Path, out: Path, size: Size, freeze: str, precision: str) -> dict:
    """Run task1/vit_gpt2_finetuned.py main() for size.epochs epochs; the faster epoch's wall time
    (training, validation, checkpoint), every epoch's, and the set-up before the first (model, caches)."""
    from demo import load_script

    script = load_script("task1/vit_gpt2_finetuned.py")
    argv = ["--model", str(model_dir), "--data-dir", str(data), "--output-dir", str(out), "--overwrite",
            "--cache-dir", str(out.parent / f"cache-{out.name}"), "--epochs", str(size.epochs),
            "--batch-size", str(size.batch), "--lr", "1e-4", "--freeze", freeze, "--mixed-precision", precision,
            "--workers", "2", "--eval-every", "1", "--eval-preset", "greedy", "--preset", "greedy",
            "--max-new-tokens", str(size.max_new_tokens), "--patience", "0"]
    res = run_timed(script, argv, out)
    best = min(range(len(res["epochs_seconds"])), key=res["epochs_seconds"].__getitem__)
    res["train_step_seconds"] = res.pop("log")[best]["seconds"] / math.ceil(size.train / size.batch)
    return res


def run_timed(script, argv, out: Path) -> dict:
    """Run a recipe's main(argv) quietly; its faster epoch (training, validation, checkpoint), every
    epoch, the set-up before the first (models, caches), the losses and the run's log."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # one process runs several precisions; accelerate keeps one state
    record: dict = {}
    with timed_fit(record), contextlib.redirect_stdout(io.StringIO()):  # the script's own report is not ours
        t0 = time.perf_counter()
        script.main(argv)
    ends = [record["fit_start"], *record["epoch_ends"]]
    epochs = [b - a for a, b in zip(ends, ends[1:])]
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    return {"epoch_seconds": min(epochs), "epochs_seconds": epochs, "setup_seconds": record["fit_start"] - t0,
            "losses": [r["train_loss"] for r in log], "log": log}


def ours_eval(model_dir: Path, data: Path, out: Path, size: Size, precision: str) -> dict:
    """Captions per second of the project's evaluation path (a training run's final test evaluation:
    engine.generate_split, in the run's precision) from a cold pixel cache, batched beam search."""
    import torch

    from captioning.cache import pixel_datasets
    from captioning.engine import generate_split
    from captioning.models import load_vit_gpt2, vit_gpt2_recipe
    from demo import load_script

    cfg = load_script("task1/vit_gpt2_finetuned.py").Config(
        model=str(model_dir), data_dir=str(data / "eval"), images_dir=str(data / "images"), output_dir=str(out),
        cache_dir=str(out / "cache"), batch_size=size.eval_batch, preset="beam", max_new_tokens=size.max_new_tokens,
        workers=2, mixed_precision=precision)
    model, processor, tokenizer = load_vit_gpt2(cfg.model)
    recipe = vit_gpt2_recipe(model, processor, tokenizer, cfg)
    t0 = time.perf_counter()
    test = pixel_datasets(cfg, processor, ("test",))["test"]
    caps = generate_split(recipe.caption, model, test, cfg, "beam", torch.device("cpu"), "captioning")
    seconds = time.perf_counter() - t0
    return {"captions_per_second": len(caps) / seconds, "captions": caps}


# -------------------------------------------------------------------------------- original
def original_epoch(model_dir: Path, data: Path, size: Size, freeze: str) -> dict:
    """size.epochs epochs the original's way (training pass + validation); the faster one's wall time."""
    import torch

    from original import caption_one_at_a_time, train_epoch, train_loader
    from captioning.data import load_split
    from captioning.metrics import evaluate_captions
    from captioning.models import freeze as apply_freeze
    from captioning.models import load_vit_gpt2

    model, processor, tokenizer = load_vit_gpt2(str(model_dir))
    apply_freeze(model, freeze)
    train, _ = load_split(data, "train")
    valid, _ = load_split(data, "valid")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.01)

    def validate():
        preds = caption_one_at_a_time(model, valid, processor, tokenizer, "beam", size.max_new_tokens)
        evaluate_captions(preds, [r.references for r in valid])

    return timed_epochs(size.epochs, lambda epoch: train_epoch(
        model, train_loader(train, processor, size.batch, seed=epoch), optimizer, tokenizer), validate)


def timed_epochs(n: int, train_pass, validate) -> dict:
    """n epochs of train_pass(epoch) -> losses, then validate(): the faster epoch's wall time, its
    training step and validation time, every epoch's time and mean loss."""
    epochs = []
    for epoch in range(n):
        t0 = time.perf_counter()
        losses = train_pass(epoch)
        t_train = time.perf_counter() - t0
        validate()
        total = time.perf_counter() - t0
        epochs.append((total, t_train / len(losses), total - t_train, sum(losses) / len(losses)))
    seconds, step, validation, _ = min(epochs)
    return {"epoch_seconds": seconds, "epochs_seconds": [e[0] for e in epochs], "train_step_seconds": step,
            "validation_seconds": validation, "losses": [e[3] for e in epochs]}


def original_eval(model_dir: Path, data: Path, size: Size) -> dict:
    from original import caption_one_at_a_time
    from captioning.data import load_split
    from captioning.models import load_vit_gpt2

    model, processor, tokenizer = load_vit_gpt2(str(model_dir))
    test, _ = load_split(data / "eval", "test", data / "images")
    t0 = time.perf_counter()
    caps = caption_one_at_a_time(model, test, processor, tokenizer, "beam", size.max_new_tokens)
    return {"captions_per_second": len(caps) / (time.perf_counter() - t0), "captions": caps}


# ------------------------------------------------------------------------------------- run
def run(size: Size | None = None, quick: bool = False, fp32_row: bool = True, log=print) -> dict:
    """Every measurement of this file, side by side; returns the figures (see the module docstring)."""
    from captioning.config import quiet_libraries
    from captioning.metrics import evaluate_captions

    size = size or (QUICK if quick else Size())
    quiet_libraries()
    same_cpu_settings()
    precision = "bf16" if native_bf16() else "no"
    half = "bfloat16" if precision == "bf16" else "float32"
    # the machine's matmul rate, measured now and again at the end (the better of the two counts: on a
    # shared machine the training steps in between may have had more of the CPU than either moment)
    peaks = {half: matmul_flops(half), "float32": matmul_flops("float32")}
    res: dict = {"size": asdict(size), "precision": precision}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        tmp = Path(tmp)
        titles = make_photos(tmp / "data", size)
        model_dir = build_model(tmp / "model", size, titles)
        evaluate_captions(["a dish"], ["a dish"])  # warm: one long-lived METEOR process for both sides, the
        # Java tokenizer's first start and the imports are paid before any timing

        def side_by_side(name: str, what: str, freeze: str) -> None:
            log(f"  {what}: the original's approach ...")
            base = original_epoch(model_dir, tmp / "data", size, freeze)
            log(f"    {base['epoch_seconds']:.1f} s per epoch; ours ({precision}) ...")
            ours = ours_epoch(model_dir, tmp / "data", tmp / f"ours-{name}", size, freeze, precision)
            log(f"    {ours['epoch_seconds']:.1f} s per epoch")
            res[f"{name}_epoch_speedup"] = base["epoch_seconds"] / ours["epoch_seconds"]
            res[name] = {"original": base, "ours": ours}

        side_by_side("finetune", "full fine-tuning", "none")
        if fp32_row and precision != "no":
            log("    ours in fp32 (what the caches and batching give without bf16) ...")
            ours_fp32 = ours_epoch(model_dir, tmp / "data", tmp / "ours-fp32", size, "none", "no")
            res["finetune"]["ours_fp32"] = ours_fp32
            base_seconds = res["finetune"]["original"]["epoch_seconds"]
            res["finetune_epoch_speedup_fp32"] = base_seconds / ours_fp32["epoch_seconds"]
        side_by_side("frozen", "frozen encoder (--freeze vit)", "vit")

        log("  evaluation (beam search, 4 beams) ...")
        base_eval = original_eval(model_dir, tmp / "data", size)
        ours_ev = ours_eval(model_dir, tmp / "data", tmp / "ours-eval", size, precision)
        res["eval_speedup"] = ours_ev["captions_per_second"] / base_eval["captions_per_second"]
        res["eval"] = {"original_captions_per_second": base_eval["captions_per_second"],
                       "ours_captions_per_second": ours_ev["captions_per_second"],
                       "same_captions": base_eval["captions"] == ours_ev["captions"]}

        log("  utilisation ...")
        flops = step_flops(model_dir, titles, size)
        base_full, ours_full = res["finetune"]["original"], res["finetune"]["ours"]
        peak = max(peaks[half], matmul_flops(half))
        peak32 = max(peaks["float32"], matmul_flops("float32"))
        achieved = flops / ours_full["train_step_seconds"]
        res["utilisation"] = achieved / peak
        res["flops"] = {"step_flops": flops, "ours_achieved_flops": achieved, "matmul_peak_flops": peak,
                        "matmul_peak_flops_fp32": peak32,
                        "original_achieved_flops": flops / base_full["train_step_seconds"],
                        "original_utilisation": flops / base_full["train_step_seconds"] / peak32}
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a tiny model and a few images: checks the plumbing")
    p.add_argument("--no-fp32-row", action="store_true", help="skip ours in fp32 (when bf16 is used)")
    p.add_argument("--json", help="also write every figure to this JSON file")
    a = p.parse_args(argv)
    res = run(quick=a.quick, fp32_row=not a.no_fp32_row)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2, default=str))
    for key in ("finetune_epoch_speedup", "finetune_epoch_speedup_fp32", "frozen_epoch_speedup", "eval_speedup",
                "utilisation"):
        if key in res:
            print(f"{key}: {res[key]:.3f}")


if __name__ == "__main__":
    main()
