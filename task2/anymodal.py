"""The prefix-embedding multimodal captioner (in the style of the AnyModal framework); the code lives
in captioning.prefix_llm.

Every sequence the LLM sees is   [BOS] [projected image tokens] [prompt] [caption] [EOS]
built as embeddings. Only the caption and its EOS carry labels; generation runs batched and
left-padded with the KV cache. A trained captioner is saved as a folder: adapter/ (peft),
projector.safetensors, tokenizer/, anymodal.json and captioner.json, which
`python -m captioning.caption --model RUN` and the web page load too.
"""
from captioning.prefix_llm import SETTINGS_FILE, AnyModalCaptioner, anymodal_recipe

__all__ = ["SETTINGS_FILE", "AnyModalCaptioner", "anymodal_recipe"]
