"""Fine-tune ViT-GPT2 with the decoder attention mask passed in training and validation.

Captions in a batch have different lengths and are right-padded. Here the padding is marked by
the decoder attention mask and its label positions are -100, so padding neither feeds the decoder
nor trains it, while every caption keeps its EOS target (the pad id equals EOS in ViT-GPT2, so
masking labels by `== pad_token_id` would erase the EOS target and the model would never learn to
stop). With right padding and a causal decoder, the mask cannot change what a real
token sees; it matters for left padding and guards against a decoder that mixes positions.

    python task1/vit_gpt2_attention.py --data-dir data --output-dir runs/vit_gpt2_attention
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
    # Where this run writes its folder
    output_dir: str = "runs/vit_gpt2_attention"


def main(argv=None):
    cfg = parse_config(Config, argv, __doc__)
    preflight(cfg)  # data and output folders checked before the model loads
    model, processor, tokenizer = load_vit_gpt2(cfg.model, hf_token(cfg.hf_token))
    counts = freeze(model, cfg.freeze)
    print(f"freeze={cfg.freeze}: {counts['trainable']:,} of {counts['total']:,} parameters train")
    datasets = vit_gpt2_datasets(cfg, model, processor)  # --freeze vit: the feature cache
    recipe = vit_gpt2_recipe(model, processor, tokenizer, cfg, decoder_mask=True)
    method = f"vit_gpt2_attention (XE, decoder mask, freeze {cfg.freeze})"
    return train_and_evaluate(cfg, recipe, datasets, method)


if __name__ == "__main__":
    run_main(main)
