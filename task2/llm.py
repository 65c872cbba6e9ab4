"""The language model of task2 and its LoRA adapter (the code lives in captioning.prefix_llm).

    llm, tokenizer = get_llm("meta-llama/Llama-3.2-1B", token)   # token: --hf-token or $HF_TOKEN
    llm = add_peft(llm, "r8")

Llama 3.2 is gated on the Hugging Face hub: accept its licence there, then pass a token. The token
goes only to `from_pretrained`; it is never printed, logged or saved. The LoRA presets (llm.LORA):
"r8" (Llama 3.2 1B: rank 8, alpha 32), "r4" (3B: rank 4, alpha 16), "r2" (3B: rank 2, alpha 16),
on every linear layer of the Llama blocks (LORA_TARGETS).
"""
from captioning.prefix_llm import DEFAULT_LLM, DTYPES, LORA, LORA_TARGETS, add_peft, get_llm, pick_lora

__all__ = ["DEFAULT_LLM", "DTYPES", "LORA", "LORA_TARGETS", "add_peft", "get_llm", "pick_lora"]
