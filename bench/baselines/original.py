"""The original project's approach, re-created so that bench/ can time it beside ours on the same
data, model and machine. Only the way of working is the original's; the model, the targets
(captioning.models.encode_targets) and the decoding settings (captioning.generation) are shared
with our side, so both sides compute the same thing and only the time differs.

What the original did, and this module does the same way:
- training data: a Dataset whose __getitem__ opens the JPEG, converts it to RGB and runs the image
  processor (resize, rescale, normalise) on that one item, every epoch; a DataLoader without workers;
- training: full precision; the ViT encoder runs on every step, also when it is frozen;
- validation: beam search (4 beams) over the whole validation split after every epoch;
- captioning (validation and test): one image at a time;
- SCST rewards: one scorer call per caption.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from PIL import Image

from captioning.generation import decode, generation_kwargs
from captioning.models import encode_targets


class PerItemDataset(torch.utils.data.Dataset):
    """Decode and preprocess one image per __getitem__ call (no cache, nothing reused)."""

    def __init__(self, records, processor):
        self.records, self.processor = records, processor

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        r = self.records[i]
        image = Image.open(r.path).convert("RGB")
        pixel_values = self.processor(images=image, return_tensors="pt")["pixel_values"][0]
        return {"pixel_values": pixel_values, "caption": r.title}


def collate(items):
    return {"pixel_values": torch.stack([it["pixel_values"] for it in items]),
            "caption": [it["caption"] for it in items]}


def train_loader(records, processor, batch_size: int, seed: int = 0):
    return torch.utils.data.DataLoader(PerItemDataset(records, processor), batch_size=batch_size, shuffle=True,
                                       num_workers=0, collate_fn=collate,
                                       generator=torch.Generator().manual_seed(seed))


def train_epoch(model, loader, optimizer, tokenizer, max_length: int = 32, max_steps: int | None = None) -> list:
    """One pass of full-precision cross-entropy training; returns the losses."""
    model.train()
    if not any(p.requires_grad for p in model.encoder.parameters()):
        model.encoder.eval()  # frozen, yet still run on every step
    losses = []
    for step, batch in enumerate(loader):
        if max_steps is not None and step == max_steps:
            break
        labels, _ = encode_targets(tokenizer, batch["caption"], max_length)
        loss = model(pixel_values=batch["pixel_values"], labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


@torch.no_grad()
def caption_one_at_a_time(model, records, processor, tokenizer, preset: str = "beam",
                          max_new_tokens: int = 24) -> list[str]:
    """Decode, preprocess and caption each image on its own (batch 1)."""
    model.eval()
    out = []
    for r in records:
        image = Image.open(r.path).convert("RGB")
        pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
        ids = model.generate(pixel_values=pixel_values, **generation_kwargs(preset, max_new_tokens))
        out.extend(decode(tokenizer, ids))
    return out


def per_caption_rewards(scorer, captions, references) -> tuple[np.ndarray, float]:
    """One pycocoevalcap scorer call per caption (e.g. METEOR, the original's reward); (rewards, seconds)."""
    t0 = time.perf_counter()
    rewards = []
    for cap, refs in zip(captions, references):
        refs = [refs] if isinstance(refs, str) else list(refs)
        score, _ = scorer.compute_score({0: refs}, {0: [cap or "."]})
        rewards.append(float(score))
    return np.asarray(rewards), time.perf_counter() - t0
