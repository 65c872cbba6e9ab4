"""The language model of task2 and its LoRA adapter.

    llm, tokenizer = get_llm("meta-llama/Llama-3.2-1B", token)   # token: --hf-token or $HF_TOKEN
    llm = add_peft(llm, "r8")

Llama 3.2 is gated on the Hugging Face hub: accept its licence there, then pass a token. The token
goes only to `from_pretrained`; it is never printed, logged or saved.
"""
from __future__ import annotations

import torch

from captioning.config import UserError
from captioning.models import _load_error, _load_errors, check_local_or_hub

DEFAULT_LLM = "meta-llama/Llama-3.2-1B"
# Every linear layer of the Llama blocks gets an adapter (attention and MLP).
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# The LoRA settings of the original (pick one with --lora):
#   "r8"  Llama 3.2 1B: rank 8, alpha 32, dropout 0.1
#   "r4"  Llama 3.2 3B: rank 4, alpha 16, dropout 0.1
#   "r2"  Llama 3.2 3B, the smaller adapter also tried: rank 2, alpha 16, dropout 0.1
#   "auto" r8 for models up to 2B parameters, r4 above
LORA = {
    "r8": dict(r=8, lora_alpha=32, lora_dropout=0.1),
    "r4": dict(r=4, lora_alpha=16, lora_dropout=0.1),
    "r2": dict(r=2, lora_alpha=16, lora_dropout=0.1),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def get_llm(name: str = DEFAULT_LLM, token: str | None = None, dtype: str = "float32"):
    """(causal LM, tokenizer) from a hub id or a save_pretrained folder.

    Llama 3 ships no pad token: the tokenizer gets pad = eos, and padding is always marked by the
    attention mask (never by the pad id), so the EOS target survives."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_local_or_hub(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, token=token)
        model = AutoModelForCausalLM.from_pretrained(name, token=token, dtype=DTYPES[dtype])
    except _load_errors() as e:  # includes refused pickles and damaged safetensors
        text = str(e).lower()
        if any(w in text for w in ("gated", "401", "403", "restricted")):
            raise UserError(f"{name} is gated on the Hugging Face hub: accept its licence on the model page "
                            "and pass a token with --hf-token or HF_TOKEN.") from None
        raise _load_error(name, e) from None
    if tokenizer.eos_token_id is None:
        raise UserError(f"the tokenizer of {name} has no EOS token: captions could never stop.")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer


def pick_lora(model, lora: str = "auto") -> str:
    """The LoRA preset to use: `lora`, or for "auto" the original's choice by model size."""
    if lora == "auto":
        return "r8" if sum(p.numel() for p in model.parameters()) <= 2e9 else "r4"
    if lora not in LORA:
        raise UserError(f"unknown LoRA preset {lora!r}; choose one of auto, {', '.join(LORA)}.")
    return lora


def add_peft(model, lora: str = "r8"):
    """Wrap `model` with a LoRA adapter on every linear layer of its blocks; the base stays frozen."""
    from peft import LoraConfig, get_peft_model

    present = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    targets = [t for t in LORA_TARGETS if t in present]
    if not targets:
        raise UserError(f"{type(model).__name__} has none of the Llama layers LoRA adapts "
                        f"({', '.join(LORA_TARGETS)}).")
    config = LoraConfig(task_type="CAUSAL_LM", target_modules=targets, **LORA[pick_lora(model, lora)])
    return get_peft_model(model, config)
