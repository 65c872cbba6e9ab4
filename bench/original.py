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
- SCST rewards: one scorer call per caption;
- task2 (the AnyModal framework's MultiModalModel and training loop): the frozen encoder runs on every
  step; each sample's sequence [BOS][image tokens][prompt][caption][EOS] is tokenized, embedded and
  concatenated on its own, then right-padded with embedded EOS tokens; the LLM computes logits at
  every position and its loss from labels with -100 on the prefix; validation is the loss over the
  validation split and a few captions generated one image at a time.
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

    def loss_of(batch):
        labels, _ = encode_targets(tokenizer, batch["caption"], max_length)
        return model(pixel_values=batch["pixel_values"], labels=labels).loss

    return optimise(loader, loss_of, optimizer, max_steps)


def optimise(loader, loss_of, optimizer, max_steps: int | None = None) -> list:
    """Plain steps over `loader`: loss, backward, AdamW step; returns the losses."""
    losses = []
    for step, batch in enumerate(loader):
        if max_steps is not None and step == max_steps:
            break
        loss = loss_of(batch)
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


# ------------------------------------------------------------------------------------------- task2
def anymodal_loss(model, features: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """The loss of task2.anymodal.AnyModalCaptioner (same model, same targets), assembled as AnyModal's
    MultiModalModel.forward does: sample by sample, logits at every position."""
    embed = model.llm.get_input_embeddings()
    image = model.projector(features)

    def ids_embedding(ids):
        return embed(torch.tensor(ids, dtype=torch.long, device=image.device))

    prompt = model.tokenizer(model.prompt.rstrip(), add_special_tokens=False)["input_ids"]
    rows, labels = [], []
    for img, caption in zip(image, captions):
        text = model.tokenizer(" " + caption, add_special_tokens=False)["input_ids"][: model.max_length - 1]
        text = text + [model.eos_id]
        row = torch.cat([ids_embedding(model.bos), img.to(embed.weight.dtype), ids_embedding(prompt),
                         ids_embedding(text)])
        rows.append(row)
        labels.append(torch.tensor([-100] * (len(row) - len(text)) + text))
    width = max(len(r) for r in rows)
    masks = []
    for i, row in enumerate(rows):
        pad = width - len(row)
        rows[i] = torch.cat([row, ids_embedding([model.eos_id] * pad)])
        labels[i] = torch.cat([labels[i], torch.full((pad,), -100)])
        masks.append(torch.cat([torch.ones(len(row)), torch.zeros(pad)]))
    return model.llm(inputs_embeds=torch.stack(rows), attention_mask=torch.stack(masks).long(),
                     labels=torch.stack(labels).to(image.device)).loss


def anymodal_epoch(model, encoder, loader, optimizer) -> list:
    """One full-precision training pass; the frozen encoder runs on every batch."""
    model.train()

    def loss_of(batch):
        with torch.no_grad():
            features = encoder(pixel_values=batch["pixel_values"]).last_hidden_state
        return anymodal_loss(model, features, batch["caption"])

    return optimise(loader, loss_of, optimizer)


@torch.no_grad()
def anymodal_validation(model, encoder, loader, records, processor, samples: int = 5,
                        max_new_tokens: int = 24) -> tuple[float, list[str]]:
    """The validation loss over `loader`, then `samples` captions generated one image at a time."""
    model.eval()
    losses = [anymodal_loss(model, encoder(pixel_values=b["pixel_values"]).last_hidden_state, b["caption"]).item()
              for b in loader]
    captions = []
    for r in records[:samples]:
        pixel_values = processor(images=Image.open(r.path).convert("RGB"), return_tensors="pt")["pixel_values"]
        captions += model.caption(encoder(pixel_values=pixel_values).last_hidden_state, "greedy", max_new_tokens)
    return float(np.mean(losses)), captions
