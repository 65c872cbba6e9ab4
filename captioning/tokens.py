"""Caption token ids as training targets (a leaf module: the families and the training objectives share it).

Token-id hygiene: nlpconnect/vit-gpt2-image-captioning uses id 50256 for bos = eos = pad =
decoder_start. Labels are therefore masked by the attention mask, never by `== pad_token_id`
(that would also erase the EOS target and the model would never learn to stop).
"""
from __future__ import annotations

import torch


def encode_targets(tokenizer, captions: list[str], max_length: int = 32):
    """Caption token ids + EOS, right-padded. Returns (labels with -100 on padding, attention mask).

    The mask, not the pad id, marks padding, so the EOS target survives when pad == eos.
    """
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    ids = tokenizer(list(captions), add_special_tokens=False)["input_ids"]
    seqs = [x[: max_length - 1] + [eos] for x in ids]
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        input_ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    labels = input_ids.masked_fill(mask == 0, -100)
    return labels, mask
