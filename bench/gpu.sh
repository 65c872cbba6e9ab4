#!/usr/bin/env bash
# A prepared check for a machine with a CUDA GPU (the project never needs one): bf16 training step
# time and utilisation of the full-size ViT-GPT2 architecture (ViT-B/16 at 224 px + GPT-2 124M with
# cross-attention, as nlpconnect/vit-gpt2-image-captioning) with random weights, through the
# project's own accelerator set-up (captioning.engine.make_accelerator, bf16 autocast). Offline;
# well under 5 minutes. Prints step time, images/s, the epoch time of the Kaggle training split,
# the step's FLOP/s, the GPU's measured bf16 matmul FLOP/s, their ratio, and batched greedy
# captioning speed. Then every recipe at real size (bench/realscale.py --gpu: ViT-GPT2 full, --freeze vit and
# SCST, ViT + Llama 3.2 1B and 3B with LoRA, DeepSeek-VL 1.3B zero-shot, random weights) at its default batch
# in the default precision: the measured peak GPU memory, step time and epoch time of the Kaggle training
# split that the README's hardware table marks as derived until someone runs this (about 15 more minutes).
#
#   bash bench/gpu.sh                          # batch 32, 20 timed steps, then every recipe
#   RECIPES=0 bash bench/gpu.sh                # the ViT-GPT2 step only
#   ONLY=llama-1b,llama-3b bash bench/gpu.sh   # some recipes (bench/realscale.py --list)
#   BATCH=64 STEPS=50 bash bench/gpu.sh
#   PYTHON=/path/to/python bash bench/gpu.sh   # default: .venv/bin/python, else python3
#   bash bench/gpu.sh --tiny-on-cpu            # the same code on a tiny model on the CPU (checks the script)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" - "$@" <<'EOF'
import os
import sys
import time
from types import SimpleNamespace

import torch

tiny = "--tiny-on-cpu" in sys.argv[1:]
if not tiny and not torch.cuda.is_available():
    print("bench/gpu.sh: no CUDA GPU here (torch.cuda.is_available() is False); this check is for a GPU "
          "machine, and nothing else in the project needs one.", file=sys.stderr)
    sys.exit(2)

from torch.utils.flop_counter import FlopCounterMode  # noqa: E402
from transformers import GPT2Config, ViTConfig, VisionEncoderDecoderConfig, VisionEncoderDecoderModel  # noqa: E402

from captioning.config import quiet_libraries  # noqa: E402
from captioning.engine import make_accelerator  # noqa: E402
from captioning.generation import generation_kwargs  # noqa: E402

quiet_libraries()
batch = int(os.environ.get("BATCH", 4 if tiny else 32))
steps = int(os.environ.get("STEPS", 3 if tiny else 20))
caption_tokens = 16  # a Kaggle title is about 12 GPT-2 tokens, plus EOS and padding
train_images = 10_800  # the Kaggle training split (80% of 13,500)

if tiny:
    enc = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64)
    dec = GPT2Config(vocab_size=500, n_positions=64, n_embd=32, n_layer=1, n_head=2)
else:  # the defaults are ViT-B/16 at 224 px and GPT-2 small (124M, vocabulary 50257)
    enc, dec = ViTConfig(), GPT2Config()
dec.is_decoder, dec.add_cross_attention = True, True
config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
config.decoder_start_token_id = config.pad_token_id = config.eos_token_id = config.bos_token_id = 0
torch.manual_seed(0)
model = VisionEncoderDecoderModel(config=config)
for key in ("decoder_start_token_id", "pad_token_id", "eos_token_id", "bos_token_id"):
    setattr(model.generation_config, key, 0)
model.encoder.pooler = None  # unused by the decoder (and by DDP)

accelerator = make_accelerator(SimpleNamespace(mixed_precision="no" if tiny else "bf16", grad_accum=1))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01)
model, optimizer = accelerator.prepare(model, optimizer)
device = accelerator.device
size = enc.image_size
pixels = torch.randn(batch, 3, size, size, device=device)
labels = torch.randint(1, dec.vocab_size, (batch, caption_tokens), device=device)


def sync():
    if device.type == "cuda":
        torch.cuda.synchronize()


def step():
    loss = model(pixel_values=pixels, labels=labels).loss
    accelerator.backward(loss)
    accelerator.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


model.train()
for _ in range(3):  # warm-up: kernels picked, memory pools filled
    step()
sync()
t0 = time.perf_counter()
for _ in range(steps):
    step()
sync()
step_s = (time.perf_counter() - t0) / steps
with FlopCounterMode(display=False) as counter:
    step()
flops = counter.get_total_flops()

n = 1024 if tiny else 8192
dtype = torch.float32 if tiny else torch.bfloat16
a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
a @ b
best = float("inf")
for _ in range(10):
    sync()
    t = time.perf_counter()
    a @ b
    sync()
    best = min(best, time.perf_counter() - t)
peak = 2 * n ** 3 / best

unwrapped = accelerator.unwrap_model(model)
unwrapped.eval()
gen_batch = 2 * batch
gen_pixels = torch.randn(gen_batch, 3, size, size, device=device)
with torch.no_grad():
    unwrapped.generate(pixel_values=gen_pixels[:2], **generation_kwargs("greedy", 4))
    sync()
    t = time.perf_counter()
    unwrapped.generate(pixel_values=gen_pixels, **generation_kwargs("greedy", 24, min_new_tokens=24))
    sync()
    gen_s = time.perf_counter() - t

name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU (tiny model: a check of this script only)"
params = sum(p.numel() for p in unwrapped.parameters())
print(f"device: {name}; model: {params / 1e6:.0f}M parameters, {size} px, batch {batch}, "
      f"precision {accelerator.mixed_precision}")
print(f"training step:      {step_s * 1000:.1f} ms  ({batch / step_s:.0f} images/s; "
      f"an epoch of {train_images:,} images: {train_images / batch * step_s / 60:.1f} min)")
print(f"step FLOPs:         {flops / 1e12:.3f} TFLOP  -> {flops / step_s / 1e12:.1f} TFLOP/s achieved")
print(f"matmul {n}x{n} {str(dtype).replace('torch.', '')}: {peak / 1e12:.1f} TFLOP/s measured")
print(f"utilisation:        {flops / step_s / peak:.1%} of the measured matmul rate")
if device.type == "cuda":
    print(f"peak memory:        {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
print(f"greedy captioning:  {gen_batch / gen_s:.0f} captions/s at batch {gen_batch} (24 tokens each)")
EOF
if [ "${RECIPES:-1}" = 1 ] && [[ " $* " != *" --tiny-on-cpu "* ]]; then
  "$PYTHON" bench/realscale.py --gpu ${ONLY:+--only "$ONLY"}
fi
