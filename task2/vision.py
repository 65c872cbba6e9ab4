"""The frozen image encoder of task2 and the projector that carries its features into the LLM
(the code lives in captioning.prefix_llm).

    encoder, processor = load_vision("google/vit-base-patch16-224-in21k")   # or a folder
    encoder, processor = load_vision("runs/vit_gpt2_finetuned/best")      # task1's trained ViT
    projector = Projector(encoder.config.hidden_size, llm_dim, pool="none")

The encoder never trains here, so its outputs are computed once per image by
captioning.cache.feature_cache; the Projector is what learns (with the LoRA adapter).
"""
from captioning.prefix_llm import DEFAULT_VISION, POOLS, Projector, load_vision, pool_tokens, recorded_name

__all__ = ["DEFAULT_VISION", "POOLS", "Projector", "load_vision", "pool_tokens", "recorded_name"]
