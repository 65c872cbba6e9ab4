"""Scale-out checks on the CPU: validation split over 2 processes, and memory that stays flat.

    python bench/scale.py                      # both checks, about 4 minutes on 2 quiet cores
    python bench/scale.py --only validation    # or --only memory
    python bench/scale.py --quick              # small sizes: checks the plumbing

validation  The validation of a split (free-running greedy captions of every image + the scores, as
            engine.fit runs it: engine.generate_split and engine.score_on_main) with 1 process and with
            2 processes under `accelerate launch --multi_gpu --num_processes 2` (gloo), one thread per
            process: a process stands for a GPU. Model: ViT-GPT2 at the benchmarks' widths (ViT 224 px,
            patch 16, width 768, 2 layers + GPT-2 width 768, 2 cross-attending layers), random weights,
            every caption forced to MAX_NEW_TOKENS tokens so both halves do the same work. Timed after a
            warm-up batch and a warm METEOR; target: 2 processes at least 1.6x as fast.
memory      Peak RSS (ru_maxrss) of a fresh process that builds the pixel cache (224 px) and the
            feature cache (a tiny frozen ViT, 2 decoding workers) of N images, for N = 500 and 5,000:
            decoded images go straight to the cache file and at most a few batches wait in memory, so
            the 5,000-image peak must be at most 1.3x the 500-image one. The workers' own peak is
            reported apart (ru_maxrss of the children).

Writes runs/bench/scale.json and prints a table (bench/RESULTS.md holds the committed figures).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
MAX_NEW_TOKENS = 16


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------- validation
def validation_worker(model_dir: str, data_dir: str, cache_dir: str, out: str) -> None:
    """Runs in each process: time one validation of the valid split."""
    import torch

    from captioning import distributed, engine
    from captioning.cache import pixel_datasets
    from captioning.config import TrainConfig, quiet_libraries
    from captioning.models import load_vit_gpt2, vit_gpt2_recipe

    quiet_libraries()
    torch.set_num_threads(1)
    cfg = TrainConfig(model=model_dir, data_dir=data_dir, cache_dir=cache_dir, batch_size=8, workers=0,
                      preset="greedy", eval_preset="greedy", max_new_tokens=MAX_NEW_TOKENS)
    st = distributed.state(cfg)
    model, processor, tokenizer = load_vit_gpt2(model_dir)
    model.generation_config.min_new_tokens = MAX_NEW_TOKENS  # equal work per caption
    valid = pixel_datasets(cfg, processor, ("valid",))["valid"]
    recipe = vit_gpt2_recipe(model, processor, tokenizer, cfg)
    model.to(st.device)
    warm = type(valid)(valid.records[:2], valid.arrays[:2])
    engine.score_on_main(warm, engine.generate_split(recipe.caption, model, warm, cfg, "greedy", st.device, "warm"))
    st.wait_for_everyone()
    t0 = time.perf_counter()
    preds = engine.generate_split(recipe.caption, model, valid, cfg, "greedy", st.device, "validating")
    engine.score_on_main(valid, preds)
    st.wait_for_everyone()
    seconds = time.perf_counter() - t0
    if st.is_main_process:
        Path(out).write_text(json.dumps({"seconds": seconds, "images": len(valid), "processes": st.num_processes}))


def validation(tmp: Path, quick: bool) -> dict:
    from captioning import synthetic

    n = 80 if quick else 640  # the 80/10/10 split: 8 or 64 validation images
    data = tmp / "data"
    synthetic.make_dataset(data, n=n, seed=1, dirty=False)
    tok = synthetic.train_tokenizer([f"dish {i}" for i in range(50)] + ["A Red Plate of Two Eggs"] * 5)
    model_dir = tmp / "vitgpt2"
    widths = dict(image_size=32, patch=8, width=32, enc_layers=1, dec_layers=1, heads=2, mlp=64) if quick else \
        dict(image_size=224, patch=16, width=768, enc_layers=2, dec_layers=2, heads=12, mlp=3072)
    synthetic.build_tiny_vit_gpt2(model_dir, tok, positions=64, **widths)
    out = {}
    for procs in (1, 2):
        result = tmp / f"validation-{procs}.json"
        worker = [str(Path(__file__).resolve()), "--worker", "validation", str(model_dir), str(data),
                  str(tmp / "cache"), str(result)]
        if procs == 1:
            cmd = [sys.executable, *worker]
        else:
            cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", str(_free_port()), *worker]
        p = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=1200)
        if p.returncode:
            raise SystemExit(f"validation with {procs} process(es) failed:\n{p.stderr[-3000:]}")
        out[procs] = json.loads(result.read_text())
    return {"images": out[1]["images"], "one_process_s": out[1]["seconds"], "two_processes_s": out[2]["seconds"],
            "speedup": out[1]["seconds"] / out[2]["seconds"]}


# ----------------------------------------------------------------------------------------- memory
def memory_worker(data_dir: str, vit_dir: str, n: str, cache_dir: str, out: str) -> None:
    """Runs in a fresh process: build both caches for the first n training images, report peak RSS."""
    from captioning.cache import feature_cache, pixel_cache
    from captioning.data import load_split
    from captioning.prefix_llm import load_vision

    records = load_split(data_dir, "train")[0][: int(n)]
    encoder, processor = load_vision(vit_dir)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    pixel_cache(records, 224, 2, cache_dir, workers=2, desc="pixels")
    feature_cache(records, processor, encoder, cache_dir, workers=2, batch_size=64, desc="features")
    Path(out).write_text(json.dumps({
        "images": len(records), "seconds": time.perf_counter() - t0, "rss_before_mib": before / 1024,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "workers_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))


def memory(tmp: Path, quick: bool) -> dict:
    from captioning import synthetic

    small, large = (50, 500) if quick else (500, 5000)
    data = tmp / "mem"
    synthetic.make_dataset(data, n=int(large / 0.8) + 1, seed=2, dirty=False)
    vit = tmp / "vit"
    synthetic.build_tiny_vit(vit)
    out = {}
    for n in (small, large):
        result = tmp / f"memory-{n}.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "memory", str(data), str(vit), str(n),
               str(tmp / f"cache-{n}"), str(result)]
        p = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=1200)
        if p.returncode:
            raise SystemExit(f"cache build of {n} images failed:\n{p.stderr[-3000:]}")
        out[n] = json.loads(result.read_text())
    return {"small": out[small], "large": out[large],
            "ratio": out[large]["peak_rss_mib"] / out[small]["peak_rss_mib"]}


def main(argv=None):
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--worker":
        kind, *args = sys.argv[2:]
        return {"validation": validation_worker, "memory": memory_worker}[kind](*args)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", choices=("validation", "memory"))
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    load = os.getloadavg()
    result = {"load_before": [round(x, 1) for x in load]}
    with tempfile.TemporaryDirectory() as d:
        if a.only in (None, "validation"):
            result["validation"] = v = validation(Path(d), a.quick)
            print(f"validation of {v['images']} images: 1 process {v['one_process_s']:.1f} s, 2 processes "
                  f"{v['two_processes_s']:.1f} s: {v['speedup']:.2f}x (target >= 1.6x)")
        if a.only in (None, "memory"):
            result["memory"] = m = memory(Path(d), a.quick)
            s, g = m["small"], m["large"]
            print(f"cache build peak RSS: {s['images']} images {s['peak_rss_mib']:.0f} MiB, {g['images']} images "
                  f"{g['peak_rss_mib']:.0f} MiB: {m['ratio']:.2f}x (target <= 1.3x); decoding workers' peak "
                  f"{s['workers_peak_rss_mib']:.0f} / {g['workers_peak_rss_mib']:.0f} MiB")
    result["load_after"] = [round(x, 1) for x in os.getloadavg()]
    out = ROOT / "runs" / "bench" / "scale.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"load {result['load_before']} before, {result['load_after']} after; written to {out}")


if __name__ == "__main__":
    main()
