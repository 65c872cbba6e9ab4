"""Task 2 speed on the tiny synthetic models: the feature cache, and batched generation.

    python bench/bench_task2.py

task2_epoch_speedup            a training epoch (projector + LoRA Llama forward/backward + AdamW) that
                               reads cached encoder features, against the same epoch running the frozen
                               encoder on every batch of already decoded pixels (the encoder's cost alone)
task2_epoch_speedup_vs_decoding  the same, against decoding and preprocessing every JPEG at every step
                               and then running the encoder (a loop without any cache)
generation_batch_speedup       per-image time of greedy captioning at batch 16 against one image at a
                               time, both generating the same number of tokens
Each timing is the best of a few repeats, on one thread (the machine may be shared). The epoch ratio
is bounded by the encoder's share of a step, 1 + encoder forward / (LLM forward + backward): about
a tenth here (the tiny ViT's forward beside the tiny Llama's forward and backward), and about 3% of the
FLOPs for ViT-B/16 (86M parameters, 197 tokens) beside Llama 3.2 1B (1.2B, ~220 tokens with the image
prefix). Caching saves that share plus the decoding, and frees the encoder's memory; it cannot make a
LoRA epoch several times faster.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "task2")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

BATCH, IMAGES, REPEATS = 32, 256, 3


def _best(fn, repeats=REPEATS) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def run() -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ops this small: a second thread only adds contention noise on a shared CPU
    try:
        return _run()
    finally:
        torch.set_num_threads(threads)


def _run() -> dict:
    from anymodal import AnyModalCaptioner
    from llm import add_peft, get_llm
    from vision import Projector, load_vision

    from captioning import synthetic
    from captioning.cache import feature_cache, pixel_cache
    from captioning.config import quiet_libraries
    from captioning.data import load_image, load_split
    from captioning.models import pixel_normalizer

    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synthetic.make_dataset(tmp, n=IMAGES + 64, seed=5, dirty=False)
        synthetic.build_tiny_llama(tmp / "llama")
        synthetic.build_tiny_vit(tmp / "vit")
        encoder, processor = load_vision(str(tmp / "vit"))
        records = (load_split(tmp, "train")[0] + load_split(tmp, "test")[0])[:IMAGES]
        t0 = time.perf_counter()
        feats, records, _ = feature_cache(records, processor, encoder, tmp / "cache", workers=0)
        build = time.perf_counter() - t0
        pixels, _, _ = pixel_cache(records, 64, 2, tmp / "cache", workers=0)
        norm = pixel_normalizer(processor)
        torch.manual_seed(0)
        llm, tok = get_llm(str(tmp / "llama"))
        projector = Projector(encoder.config.hidden_size, llm.get_input_embeddings().embedding_dim)
        model = AnyModalCaptioner(add_peft(llm, "r8"), tok, projector,
                                  {"prompt": "The name of the dish in the image is: ", "max_length": 32})
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        captions = [r.title for r in records]

        def cached(i):
            return torch.from_numpy(np.array(feats[i: i + BATCH]))

        @torch.no_grad()
        def encoded(i):
            values = norm(torch.from_numpy(np.array(pixels[i: i + BATCH])))
            return encoder(pixel_values=values).last_hidden_state

        @torch.no_grad()
        def decoded(i):
            images = [load_image(r.path) for r in records[i: i + BATCH]]
            values = processor(images=images, return_tensors="pt")["pixel_values"]
            return encoder(pixel_values=values).last_hidden_state

        def epoch(source):
            model.train()
            for i in range(0, len(records), BATCH):
                model(source(i), captions[i: i + BATCH]).backward()
                opt.step()
                opt.zero_grad()

        epoch(cached)  # warm-up
        t_cached, t_encoded, t_decoded = _best(lambda: epoch(cached)), _best(lambda: epoch(encoded)), \
            _best(lambda: epoch(decoded))

        model.eval()
        gen = dict(preset="greedy", max_new_tokens=16, min_new_tokens=16)  # equal work per image
        x = torch.from_numpy(np.array(feats[:64])).float()
        t_one = _best(lambda: [model.generate(x[i: i + 1], **gen) for i in range(16)], 2) / 16
        t_batch = _best(lambda: [model.generate(x[i: i + 16], **gen) for i in range(0, 64, 16)], 2) / 64
    return {
        "task2_epoch_speedup": t_encoded / t_cached,
        "task2_epoch_speedup_vs_decoding": t_decoded / t_cached,
        "generation_batch_speedup": t_one / t_batch,
        "task2_epoch_s_cached": t_cached,
        "task2_epoch_s_encoder": t_encoded,
        "task2_epoch_s_decoding": t_decoded,
        "task2_feature_cache_build_s": build,
        "generation_ms_per_image_batch1": 1000 * t_one,
        "generation_ms_per_image_batch16": 1000 * t_batch,
    }


if __name__ == "__main__":
    for key, value in run().items():
        print(f"{key}: {value:.3f}")
