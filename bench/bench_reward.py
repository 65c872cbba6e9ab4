"""How much of an SCST step goes into computing rewards, on the tiny model (target: under 10%).

    python bench/bench_reward.py

Builds a small synthetic dataset and the tiny ViT-GPT2, gives it a short cross-entropy warm-up so
that its samples look like captions, then times SCST steps exactly as task1/vit_gpt2_finetuned_RL.py
runs them (batch 32, 5 samples per image, greedy baseline, ViT frozen, so its outputs come from the
feature cache, here computed once in memory): one step = sampling, greedy baseline, rewards,
log-probabilities, backward and optimiser step. The reward
time includes turning token ids into text. `run()` returns the numbers (`make bench` imports it).
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _batches(records, arrays, batch_size, rng, key="pixels"):
    import torch

    order = rng.permutation(len(records))
    for i in range(0, len(order) - batch_size + 1, batch_size):
        idx = order[i:i + batch_size]
        yield {key: torch.from_numpy(arrays[idx]), "caption": [records[j].title for j in idx],
               "references": [records[j].references for j in idx]}


def _time_scst(model, tokenizer, recipe, records, features, reward, steps, batch_size, samples, rng):
    import torch

    from captioning.scst import scst_step

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    step_s, reward_s, rewards = [], [], []
    while len(step_s) < steps:
        for batch in _batches(records, features, batch_size, rng, "features"):
            t0 = time.perf_counter()
            enc = recipe.encoded(model, batch)  # as the script: the frozen ViT's cached outputs
            out = scst_step(model, enc, batch["references"], tokenizer, reward, k=samples, baseline="greedy")
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            step_s.append(time.perf_counter() - t0)
            reward_s.append(out.reward_seconds)
            rewards.append(out.reward)
            if len(step_s) == steps:
                break
    return sum(reward_s) / sum(step_s), sum(step_s) / steps, rewards


def run(steps: int = 10, batch_size: int = 32, samples: int = 5, meteor_steps: int = 4) -> dict:
    import numpy as np
    import torch

    from captioning import synthetic
    from captioning.cache import pixel_cache
    from captioning.config import quiet_libraries
    from captioning.data import load_split
    from captioning.models import freeze, load_vit_gpt2, pixel_normalizer, vit_gpt2_recipe
    from captioning.scst import make_reward

    quiet_libraries()
    # One intra-op thread: the tiny model's matrices are too small to share, and on a busy machine two
    # spinning threads slow a step ~20x, which would shrink the reward's share and flatter the result.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synthetic.make_dataset(tmp, n=400, seed=1, dirty=False)
        models = synthetic.build_models(tmp, tmp / "models")
        model, processor, tokenizer = load_vit_gpt2(str(models / "vit-gpt2"))
        records, _ = load_split(tmp, "train")
        pixels, records, _ = pixel_cache(records, 64, cache_dir=tmp / "cache", workers=0)
        pixels = np.ascontiguousarray(pixels)
        norm = pixel_normalizer(processor)
        cfg = type("Cfg", (), {"max_length": 32, "max_new_tokens": 24})
        recipe = vit_gpt2_recipe(model, processor, tokenizer, cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        model.train()
        t0 = time.perf_counter()
        for _ in range(12):  # cross-entropy warm-up: samples become caption-like
            for batch in _batches(records, pixels, 32, rng):
                recipe.xent(model, batch).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
        warmup_s = time.perf_counter() - t0
        freeze(model, "vit")
        model.encoder.eval()
        with torch.no_grad():  # the feature cache's content
            features = torch.cat([model.encoder(pixel_values=norm(torch.from_numpy(pixels[i: i + 64])))
                                  .last_hidden_state for i in range(0, len(pixels), 64)]).numpy()
        train_refs = [r.references for r in records]
        share, step_s, rewards = _time_scst(model, tokenizer, recipe, records, features,
                                            make_reward("cider", train_refs), steps, batch_size, samples, rng)
        out = {"reward_share": share, "scst_step_seconds": step_s, "warmup_seconds": warmup_s,
               "mean_sampled_cider": float(np.mean(rewards))}
        if meteor_steps:
            from captioning.metrics import get_meteor

            get_meteor()  # the JVM start is paid once per run, not per step
            meteor = make_reward("meteor", train_refs)
            out["meteor_reward_share"] = _time_scst(model, tokenizer, recipe, records, features, meteor,
                                                    meteor_steps, batch_size, samples, rng)[0]
    torch.set_num_threads(threads)
    return out


if __name__ == "__main__":
    result = run()
    print(f"SCST step on the tiny model (batch 32 x 5 samples): {result['scst_step_seconds'] * 1000:.0f} ms")
    print(f"reward_share (CIDEr-D):  {result['reward_share']:.1%}  (target < 10%)")
    if "meteor_reward_share" in result:
        print(f"reward_share (METEOR):   {result['meteor_reward_share']:.1%}")
    print(f"mean sampled CIDEr-D after warm-up: {result['mean_sampled_cider']:.2f}")
