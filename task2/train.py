"""Task 2: caption food photos with Llama 3.2 (1B or 3B) behind a frozen ViT, trained with LoRA.

The frozen image encoder's tokens go through a trainable projector (an MLP) into the LLM's embedding
space and are prefixed to the prompt "The name of the dish in the image is: " (the AnyModal
recipe). Only the projector and a LoRA adapter on every linear layer of the LLM learn. The encoder's
outputs are computed once per image (the feature cache), so an epoch costs only the LLM.

    HF_TOKEN=... python task2/train.py --data-dir data --output-dir runs/llama_lora
    python task2/train.py --model meta-llama/Llama-3.2-3B --lora r4 ...          # the 3B variant
    python task2/train.py --vision-model runs/vit_gpt2_finetuned/best ...       # task1's trained ViT
"""
import sys
from dataclasses import dataclass
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # so `python task2/train.py` and demo.load_script both find the modules
    sys.path.insert(0, _HERE)

from accelerate.utils import set_seed  # noqa: E402
from anymodal import AnyModalCaptioner, anymodal_recipe  # noqa: E402
from captioning.cache import encoder_fingerprint, feature_datasets  # noqa: E402
from captioning.config import TrainConfig, choice, hf_token, parse_config, preflight, run_main  # noqa: E402
from captioning.engine import train_and_evaluate  # noqa: E402
from llm import DEFAULT_LLM, add_peft, get_llm, pick_lora  # noqa: E402
from vision import DEFAULT_VISION, Projector, load_vision, recorded_name  # noqa: E402


@dataclass
class Config(TrainConfig):
    # The language model, a hub id or a local folder (the Llama 3.2 models are gated: set HF_TOKEN):
    #   "meta-llama/Llama-3.2-1B"  the original's main model
    #   "meta-llama/Llama-3.2-3B"  the larger one (LoRA r4 or r2)
    model: str = DEFAULT_LLM
    # The frozen image encoder: a hub id, a model folder, or a task1 run (runs/<run>/best gives its ViT)
    vision_model: str = DEFAULT_VISION
    # LoRA adapter (llm.LORA):
    #   "auto" r8 up to 2B parameters, r4 above
    #   "r8"   the original's 1B setting: rank 8, alpha 32, dropout 0.1 on q, k, v, o, gate, up, down
    #   "r4"   the original's 3B setting: rank 4, alpha 16
    #   "r2"   the smaller 3B adapter also tried: rank 2, alpha 16
    lora: str = choice("auto", "r8", "r4", "r2")
    # Text between the image tokens and the caption
    prompt: str = "The name of the dish in the image is: "
    # Which image tokens reach the LLM (vision.POOLS):
    #   "none" every token (197 for ViT-B/16), "cls" the CLS token, "mean" one averaged token,
    #   "2x2" / "4x4" the patch grid average-pooled to 4 / 16 tokens
    pool: str = choice("none", "cls", "mean", "2x2", "4x4")
    # Linear layers of the projector (2 = Linear-GELU-Linear; 1 = a single Linear)
    projector_layers: int = 2
    # Width of the projector's hidden layers (0 = the LLM's embedding size)
    projector_hidden: int = 0
    # Base weights of the LLM: "float32" (bf16 autocast on a GPU brings the speed),
    #   "bfloat16" (half the memory)
    llm_dtype: str = choice("float32", "bfloat16")
    output_dir: str = "runs/llama_lora"
    # Learning rate of the adapter and projector (LoRA on pretrained LLMs: 1e-4..3e-4; the tiny models ~3e-3)
    lr: float = 2e-4
    epochs: int = 5
    batch_size: int = 16


def main(argv=None):
    cfg = parse_config(Config, argv, __doc__)
    preflight(cfg)  # data and output folders checked before the model loads
    set_seed(cfg.seed)  # the projector's and the adapter's initial weights: the same seed, the same run
    token = hf_token(cfg.hf_token)
    encoder, processor = load_vision(cfg.vision_model, token)
    fingerprint = encoder_fingerprint(encoder)
    # computed once, by one process per machine, on its own device (the others read the file it commits)
    datasets = feature_datasets(cfg, processor, encoder, encoder_key=fingerprint)
    llm, tokenizer = get_llm(cfg.model, token, cfg.llm_dtype)
    lora = pick_lora(llm, cfg.lora)
    llm = add_peft(llm, lora)
    projector = Projector(encoder.config.hidden_size, llm.get_input_embeddings().embedding_dim,
                          cfg.projector_hidden, cfg.projector_layers, cfg.pool)
    del encoder  # every feature is cached: the encoder has done its work
    settings = {"llm": recorded_name(cfg.model), "vision_model": recorded_name(cfg.vision_model),
                "vision_fingerprint": fingerprint, "projector": projector.settings, "prompt": cfg.prompt,
                "max_length": cfg.max_length, "llm_dtype": cfg.llm_dtype, "lora": lora}
    model = AnyModalCaptioner(llm, tokenizer, projector, settings)
    method = f"llama_lora ({Path(cfg.model).name}, LoRA {lora}, pool {cfg.pool})"
    return train_and_evaluate(cfg, anymodal_recipe(model, cfg, token), datasets, method)


if __name__ == "__main__":
    run_main(main)
