"""Fine-tune BLIP (Salesforce/blip-image-captioning-base) on food titles, with LoRA or in full.

BLIP pairs a ViT with a BERT-style text decoder that reads the image through cross-attention. By
default a LoRA adapter learns on the decoder's attention while the vision tower stays frozen (its
outputs computed once per image, from the feature cache); `--lora none` trains the whole decoder, and
`--train-vision` the vision tower too. Same engine, run folder and table as every recipe.

    python task1/blip.py --data-dir data --output-dir runs/blip_lora
    python task1/blip.py --data-dir data --lora none --train-vision --lr 1e-5 --output-dir runs/blip_full
"""
from dataclasses import dataclass

from captioning.blip import DEFAULT_BLIP, blip_recipe, load_blip, prepare
from captioning.cache import pixel_datasets
from captioning.config import TrainConfig, choice, hf_token, parse_config, preflight, run_main
from captioning.engine import train_and_evaluate
from captioning.prefix_llm import recorded_name


@dataclass
class Config(TrainConfig):
    model: str = DEFAULT_BLIP
    output_dir: str = "runs/blip"
    # What learns (pick one):
    #   "r16"  a LoRA adapter (rank 16, alpha 32) on the text decoder's query and value layers
    #   "r8"   the same at rank 8
    #   "none" the whole text decoder (add --train-vision for the vision tower too)
    lora: str = choice("r16", "r8", "none")
    # With --lora none: also train the vision tower (no feature cache then: it runs every step)
    train_vision: bool = False
    # Learning rate (LoRA on the checkpoint: 1e-4..5e-4; in full 1e-5..5e-5; the tiny demo model ~3e-3)
    lr: float = 2e-4
    epochs: int = 5
    batch_size: int = 16


def main(argv=None):
    cfg = parse_config(Config, argv, __doc__)
    preflight(cfg)  # data and output folders checked before the model loads
    model, processor = load_blip(cfg.model, hf_token(cfg.hf_token))
    frozen = not (cfg.lora == "none" and cfg.train_vision)
    encoder = model.vision_model if frozen else None  # a frozen tower runs once per image (feature cache)
    datasets = pixel_datasets(cfg, processor.image_processor, encoder=encoder)
    model = prepare(model, cfg.lora, cfg.train_vision)
    what = f"LoRA {cfg.lora}" if cfg.lora != "none" else ("in full" if cfg.train_vision else "text decoder in full")
    recipe = blip_recipe(model, processor, cfg, recorded_name(cfg.model), cached=encoder is not None)
    return train_and_evaluate(cfg, recipe, datasets, f"blip ({what})")


if __name__ == "__main__":
    run_main(main)
