"""Task 2 speed: a LoRA training epoch against the original's (AnyModal) approach, and batched generation.

    python bench/bench_task2.py            # about 3 minutes on 2 quiet cores
    python bench/bench_task2.py --quick    # tiny sizes: checks the plumbing in seconds

Model: random weights, the real architectures at reduced depth: the image encoder is ViT-B/16 (224 px,
width 768, 12 heads, MLP 3072) with VIT_LAYERS layers; the LLM has Llama 3.2 1B's widths (2048, MLP
8192, 32 heads, 8 key-value heads) with LLM_LAYERS layers and its vocabulary cut in the same
proportion (8192 words: the real 128256 x 2048 projection is a fifth of the 1B model, as it is here),
a LoRA r8 adapter on every linear layer and a 2-layer projector; every image token reaches the LLM
(--pool none, 197 tokens, as in the original). One ViT layer beside one Llama layer gives the encoder
a larger share of the work than 12 ViT-B layers beside Llama 3.2 1B's 16 (about 3% of the FLOPs),
so the part of the speed-up that comes from caching its features is, if anything, overstated here.
Data: synthetic dishes saved as JPEGs at the Kaggle photos' 274x169 px (bench_train.make_photos).

  ours      task2/train.py main() itself (engine.fit timed): the feature cache (built once before the
            first epoch, reported apart), batched sequence assembly, logits only on the caption's
            positions, bf16 autocast when the CPU computes bf16 natively, fused AdamW, greedy batched
            validation captioning every epoch, a checkpoint every epoch
  original  bench/original.py: decode + image processor per item, no workers, the frozen
            encoder run on every step, AnyModal's per-sample assembly with logits at every position,
            full precision; validation loss plus 5 captions one image at a time, every epoch
Each side runs EPOCHS epochs and its faster epoch counts (as in bench_train).
task2_cache_only_speedup isolates the feature cache: our own training pass reading cached features,
against the same pass running the frozen encoder on already decoded pixels (bounded by 1 + encoder /
rest of the step). generation_batch_speedup: per-image time of greedy captioning at batch 16 against
one image at a time, both generating the same number of tokens, with the demo's tiny models (the
issue's setting); the same at the widths above is reported too (on a CPU, the 197-token prefill of
a 2048-wide model already fills the matmul units at batch 1, so batching gains less there than on a GPU).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "task2")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass
class Size:
    image: int = 224
    patch: int = 16
    vit_width: int = 768
    vit_heads: int = 12
    vit_mlp: int = 3072
    vit_layers: int = 1
    llm_width: int = 2048
    llm_mlp: int = 8192
    llm_heads: int = 32
    llm_kv_heads: int = 8
    llm_layers: int = 1
    vocab: int = 8192
    train: int = 96  # training images (an epoch of 12 steps)
    valid: int = 16
    batch: int = 8
    epochs: int = 2
    max_new_tokens: int = 16


QUICK = Size(image=32, patch=8, vit_width=32, vit_heads=2, vit_mlp=64, llm_width=32, llm_mlp=64, llm_heads=2,
             llm_kv_heads=1, vocab=0, train=16, valid=4, batch=8, epochs=2, max_new_tokens=4)
PROMPT = "The name of the dish in the image is: "


def build(folder: Path, size: Size) -> tuple[Path, Path]:
    """Random ViT encoder and Llama of `size`, saved like hub checkpoints: (vit folder, llama folder)."""
    from captioning.synthetic import build_tiny_llama, build_tiny_vit

    build_tiny_vit(folder / "vit", image_size=size.image, patch=size.patch, width=size.vit_width,
                   layers=size.vit_layers, heads=size.vit_heads, mlp=size.vit_mlp)
    build_tiny_llama(folder / "llama", pretrain_steps=0, width=size.llm_width, mlp=size.llm_mlp,
                     layers=size.llm_layers, heads=size.llm_heads, kv_heads=size.llm_kv_heads, vocab=size.vocab)
    return folder / "vit", folder / "llama"


def captioner(vit: Path, llama: Path, seed: int = 0):
    """Our AnyModalCaptioner with the training script's defaults (LoRA r8, 2-layer projector, no pooling)."""
    import torch
    from anymodal import AnyModalCaptioner
    from llm import add_peft, get_llm
    from vision import Projector, load_vision

    encoder, processor = load_vision(str(vit))
    torch.manual_seed(seed)
    llm, tok = get_llm(str(llama))
    projector = Projector(encoder.config.hidden_size, llm.get_input_embeddings().embedding_dim)
    model = AnyModalCaptioner(add_peft(llm, "r8"), tok, projector, {"prompt": PROMPT, "max_length": 32})
    return model, encoder, processor


# ------------------------------------------------------------------------------------ ours
def ours_epoch(vit: Path, llama: Path, data: Path, out: Path, size: Size, precision: str) -> dict:
    """task2/train.py main() for size.epochs epochs: the faster epoch (training, validation, checkpoint),
    every epoch, and the set-up before the first (models, feature cache)."""
    from bench_train import run_timed
    from demo import load_script

    script = load_script("task2/train.py")
    argv = ["--model", str(llama), "--vision-model", str(vit), "--data-dir", str(data), "--output-dir", str(out),
            "--overwrite", "--cache-dir", str(out.parent / f"cache-{out.name}"), "--epochs", str(size.epochs),
            "--batch-size", str(size.batch), "--lr", "1e-4", "--mixed-precision", precision, "--workers", "2",
            "--eval-every", "1", "--eval-preset", "greedy", "--preset", "greedy", "--pool", "none",
            "--max-new-tokens", str(size.max_new_tokens), "--patience", "0", "--prompt", PROMPT]
    res = run_timed(script, argv, out)
    del res["log"]
    return res


def cache_only(vit: Path, llama: Path, data: Path, out: Path, size: Size, precision: str) -> dict:
    """Our training pass (batched, kept logits, same precision) on cached features, against the same pass
    running the frozen encoder on already decoded pixels: what the feature cache alone removes."""
    import numpy as np
    import torch

    from captioning.cache import feature_cache, pixel_cache
    from captioning.data import load_split
    from captioning.models import pixel_normalizer

    model, encoder, processor = captioner(vit, llama)
    records, _ = load_split(data, "train")
    feats, records, _ = feature_cache(records, processor, encoder, out / "fc", workers=0)
    pixels, _, _ = pixel_cache(records, size.image, 2, out / "pc", workers=0)
    norm = pixel_normalizer(processor)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    captions = [r.title for r in records]
    autocast = torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16")

    def cached(i):
        return torch.from_numpy(np.array(feats[i: i + size.batch])).float()

    @torch.no_grad()
    def encoded(i):
        with autocast:
            values = norm(torch.from_numpy(np.array(pixels[i: i + size.batch])))
            return encoder(pixel_values=values).last_hidden_state

    def epoch(source):
        model.train()
        t0 = time.perf_counter()
        for i in range(0, len(records), size.batch):
            x = source(i)
            with autocast:
                loss = model(x, captions[i: i + size.batch])
            loss.backward()
            opt.step()
            opt.zero_grad()
        return time.perf_counter() - t0

    epoch(cached)  # warm-up
    rounds = [(epoch(cached), epoch(encoded)) for _ in range(2)]  # alternating: a slow minute hits both alike
    t_cached, t_encoded = min(r[0] for r in rounds), min(r[1] for r in rounds)
    return {"cached_seconds": t_cached, "encoder_seconds": t_encoded, "speedup": t_encoded / t_cached}


def generation(vit: Path, llama: Path, size: Size) -> dict:
    """Per-image greedy captioning time at batch 16 against one image at a time (equal tokens)."""
    import torch

    model, encoder, _ = captioner(vit, llama)
    model.eval()
    n = encoder.config.image_size // encoder.config.patch_size
    x = torch.randn(32, n * n + 1, encoder.config.hidden_size)
    gen = dict(preset="greedy", max_new_tokens=size.max_new_tokens, min_new_tokens=size.max_new_tokens)
    model.generate(x[:2], **gen)  # warm-up

    def best(fn, repeats=2):
        return min(_seconds(fn) for _ in range(repeats))

    t_one = best(lambda: [model.generate(x[i: i + 1], **gen) for i in range(8)]) / 8
    t_batch = best(lambda: [model.generate(x[i: i + 16], **gen) for i in range(0, 32, 16)]) / 32
    return {"ms_per_image_batch1": 1000 * t_one, "ms_per_image_batch16": 1000 * t_batch,
            "speedup": t_one / t_batch}


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# -------------------------------------------------------------------------------- original
def original_epoch(vit: Path, llama: Path, data: Path, size: Size) -> dict:
    """size.epochs epochs the AnyModal way (training pass + validation); the faster one's wall time."""
    import torch

    from original import anymodal_epoch, anymodal_validation, train_loader
    from bench_train import timed_epochs
    from captioning.data import load_split

    model, encoder, processor = captioner(vit, llama)
    train, _ = load_split(data, "train")
    valid, _ = load_split(data, "valid")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.01)
    def train_pass(epoch):
        return anymodal_epoch(model, encoder, train_loader(train, processor, size.batch, seed=epoch), optimizer)

    def validate():
        anymodal_validation(model, encoder, train_loader(valid, processor, size.batch), valid, processor,
                            max_new_tokens=size.max_new_tokens)

    return timed_epochs(size.epochs, train_pass, validate)


# ------------------------------------------------------------------------------------- run
def run(size: Size | None = None, quick: bool = False, fp32_row: bool = True, log=print) -> dict:
    from bench_train import make_photos, native_bf16, same_cpu_settings
    from captioning.config import quiet_libraries
    from captioning.synthetic import build_tiny_llama, build_tiny_vit

    size = size or (QUICK if quick else Size())
    quiet_libraries()
    same_cpu_settings()
    precision = "bf16" if native_bf16() else "no"
    res: dict = {"size": asdict(size), "precision": precision}
    with tempfile.TemporaryDirectory(prefix="bench-task2-") as tmp:
        tmp = Path(tmp)
        from bench_train import Size as TrainSize

        make_photos(tmp / "data", TrainSize(train=size.train, valid=size.valid, eval=0))  # bench_train's photos
        vit, llama = build(tmp / "models", size)

        log("  task2 LoRA epoch: the original's (AnyModal) approach ...")
        base = original_epoch(vit, llama, tmp / "data", size)
        log(f"    {base['epoch_seconds']:.1f} s per epoch; ours ({precision}) ...")
        ours = ours_epoch(vit, llama, tmp / "data", tmp / "ours", size, precision)
        log(f"    {ours['epoch_seconds']:.1f} s per epoch")
        if fp32_row and precision != "no":
            log("    ours in fp32 (what the cache, batching and kept logits give without bf16) ...")
            res["ours_fp32"] = ours_epoch(vit, llama, tmp / "data", tmp / "ours-fp32", size, "no")
            res["task2_epoch_speedup_fp32"] = base["epoch_seconds"] / res["ours_fp32"]["epoch_seconds"]
        log("    the feature cache alone ...")
        alone = cache_only(vit, llama, tmp / "data", tmp / "alone", size, precision)
        log(f"    {alone['speedup']:.2f}x; batched generation ...")
        gen_wide = generation(vit, llama, size)
        tiny_vit, tiny_llama = tmp / "tiny" / "vit", tmp / "tiny" / "llama"
        build_tiny_vit(tiny_vit)  # the demo's tiny models
        build_tiny_llama(tiny_llama)
        gen = generation(tiny_vit, tiny_llama, size)
    res.update({
        "task2_epoch_speedup": base["epoch_seconds"] / ours["epoch_seconds"],
        "task2_cache_only_speedup": alone["speedup"],
        "generation_batch_speedup": gen["speedup"],
        "generation_batch_speedup_wide": gen_wide["speedup"],
        "original": base, "ours": ours, "cache_only": alone, "generation": gen, "generation_wide": gen_wide,
    })
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes and a few images: checks the plumbing")
    p.add_argument("--json", help="also write every figure to this JSON file")
    a = p.parse_args(argv)
    res = run(quick=a.quick)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2, default=str))
    for key in ("task2_epoch_speedup", "task2_epoch_speedup_fp32", "task2_cache_only_speedup",
                "generation_batch_speedup", "generation_batch_speedup_wide"):
        if key in res:
            print(f"{key}: {res[key]:.3f}")


if __name__ == "__main__":
    main()
