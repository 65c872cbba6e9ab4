"""Fine-tune ViT-GPT2 on food titles with cross-entropy, choosing which parts to freeze.

AdamW with cosine warm restarts, validation by free-running generation, early stopping on a
validation metric, resumable checkpoints. The best epoch is scored once on the test split.
With --freeze vit the frozen ViT runs once per image, ever: the decoder trains on its cached outputs.

    python task1/vit_gpt2_finetuned.py --data-dir data --freeze vit --output-dir runs/finetuned_vit
    accelerate launch task1/vit_gpt2_finetuned.py ...      # several GPUs
"""
from dataclasses import dataclass

from captioning.config import TrainConfig, choice, hf_token, parse_config, preflight, run_main
from captioning.engine import train_and_evaluate
from captioning.models import freeze, load_vit_gpt2, vit_gpt2_datasets, vit_gpt2_recipe


@dataclass
class Config(TrainConfig):
    # What to train (pick one):
    #   "none"       fine-tune ViT and GPT-2 together
    #   "vit"        freeze the ViT encoder, train GPT-2 (its cross-attention included)
    #   "gpt2"       freeze GPT-2, train the ViT encoder
    #   "gpt2-last4" freeze the deepest 4 GPT-2 blocks only, train the rest
    freeze: str = choice("none", "vit", "gpt2", "gpt2-last4")
    output_dir: str = "runs/vit_gpt2_finetuned"


def main(argv=None):
    cfg = parse_config(Config, argv, __doc__)
    preflight(cfg)  # data and output folders checked before the model loads
    model, processor, tokenizer = load_vit_gpt2(cfg.model, hf_token(cfg.hf_token))
    counts = freeze(model, cfg.freeze)
    print(f"freeze={cfg.freeze}: {counts['trainable']:,} of {counts['total']:,} parameters train")
    datasets = vit_gpt2_datasets(cfg, model, processor)  # --freeze vit: the frozen ViT's feature cache
    recipe = vit_gpt2_recipe(model, processor, tokenizer, cfg)
    return train_and_evaluate(cfg, recipe, datasets, f"vit_gpt2_finetuned (freeze {cfg.freeze})")


if __name__ == "__main__":
    run_main(main)
