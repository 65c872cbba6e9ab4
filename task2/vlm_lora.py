"""Task 2: fine-tune a chat vision-language model on dish titles with LoRA.

Each training photo becomes one chat, "image + question" as the user turn and its title as the
assistant turn; the loss covers the title and the end-of-turn token only. A LoRA adapter learns on the
language model's linear layers; the vision tower and projector stay frozen, and their outputs are
computed once per image (the vision cache), so an epoch costs only the language model. The shared
engine validates by generation, stops early, resumes exactly and writes the usual run folder; the
adapter then captions with `task2/deepseek.py --adapter RUN`.

    python task2/vlm_lora.py --data-dir data --output-dir runs/vlm_lora                 # DeepSeek-VL 1.3B chat
    python task2/vlm_lora.py --data-dir data --model deepseek-community/deepseek-vl-7b-chat --gradient-checkpointing
    HF_TOKEN=... python task2/vlm_lora.py --data-dir data --model meta-llama/Llama-3.2-11B-Vision-Instruct
    python task2/deepseek.py --data-dir data --adapter runs/vlm_lora --output-dir runs/vlm_lora_test
"""
from dataclasses import dataclass

from accelerate.utils import set_seed

from captioning.config import TrainConfig, choice, hf_token, parse_config, preflight, run_main
from captioning.engine import Recipe, train_and_evaluate
from captioning.prefix_llm import recorded_name
from captioning.vlm import load_chat_vlm
from captioning.vlm_lora import ChatLoRA, add_lora, chat_collate, chat_datasets, load_adapter

QUESTION = "What is the title of the recipe for the dish in this image? Answer with the title only."


@dataclass
class Config(TrainConfig):
    # Any image-text-to-text chat model of transformers, for example
    #   "deepseek-community/deepseek-vl-1.3b-chat"   SigLIP + 1.3B LLM: fits a 24 GB GPU in bf16 with room to spare
    #   "deepseek-community/deepseek-vl-7b-chat"     the course's model (hybrid SigLIP + SAM): bf16 + --gradient-checkpointing
    #   "HuggingFaceTB/SmolVLM-256M-Instruct"        SigLIP-B/16 + SmolLM2-135M: small; the vision cache saves most of a step
    #   "HuggingFaceTB/SmolVLM-Instruct", "Qwen/Qwen2.5-VL-3B-Instruct", "meta-llama/Llama-3.2-11B-Vision-Instruct"
    model: str = "deepseek-community/deepseek-vl-1.3b-chat"
    output_dir: str = "runs/vlm_lora"
    # The user turn's text (the image comes first); the adapter learns to answer it with the title
    question: str = QUESTION
    # LoRA adapter on the language model's q/k/v/o and MLP projections (captioning.vlm_lora.LORA):
    #   "r16" rank 16, alpha 32    "r8" rank 8, alpha 16    "r64" rank 64, alpha 128 (more capacity)
    lora: str = choice("r16", "r8", "r64")
    # Compute the frozen vision side once per image and train on its cached outputs ("no": run it every step)
    cache_vision: str = choice("yes", "no")
    # Recompute activations in the backward pass: much less memory for a little more time (7B models)
    gradient_checkpointing: bool = False
    # Weights' precision: "auto" = bfloat16 on a GPU that supports it, else float32
    dtype: str = choice("auto", "bfloat16", "float32")
    # Learning rate of the adapter (LoRA on pretrained chat models: 1e-4..2e-4; the tiny demo model ~3e-3)
    lr: float = 1e-4
    epochs: int = 3
    # Images per step (global); with 24 GB, 8 suits the 1.3B and 4 (x grad-accum 2) the 7B
    batch_size: int = 8
    # Decoding for the reported numbers
    preset: str = choice("greedy", "beam", "nucleus")


def main(argv=None):
    cfg = parse_config(Config, argv, __doc__)
    preflight(cfg)  # data and output folders checked before the model loads
    token = hf_token(cfg.hf_token)
    model, processor = load_chat_vlm(cfg.model, token, cfg.dtype, device_map=None)  # accelerate places it
    datasets = chat_datasets(cfg, model, processor, cfg.question, cache=cfg.cache_vision == "yes")
    set_seed(cfg.seed)  # the adapter's initial weights: the same seed, the same run
    model = add_lora(model, cfg.lora)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    chat = ChatLoRA(model, processor, cfg.question, cfg.max_length, cfg.max_new_tokens)
    recipe = Recipe(model=model, loss=chat.loss, caption=chat.caption, collate=chat_collate,
                    save=lambda m, folder: chat.save(m, folder, recorded_name(cfg.model), cfg.preset),
                    load=lambda folder: load_adapter(folder, token, cfg.dtype)[0])
    cached = "cached" if datasets["train"].features is not None else "run every step"
    method = f"vlm_lora ({type(model.get_base_model()).__name__}, LoRA {cfg.lora}, vision {cached})"
    return train_and_evaluate(cfg, recipe, datasets, method)


if __name__ == "__main__":
    run_main(main)
