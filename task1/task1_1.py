"""Task 1.1: direct evaluation of the pretrained ViT-GPT2 captioner, no training.

Captions the valid and test splits with nlpconnect/vit-gpt2-image-captioning (or any
VisionEncoderDecoder by --model) and scores them with BLEU, METEOR, ROUGE-L and CIDEr.

    python task1/task1_1.py --data-dir data --output-dir runs/task1_1
    accelerate launch task1/task1_1.py ...      # several GPUs: each captions a share of the batches
"""
from dataclasses import dataclass

from captioning import distributed
from captioning.cache import pixel_datasets
from captioning.config import RunConfig, hf_token, parse_config, run_main
from captioning.engine import Run, evaluate_splits, print_metrics
from captioning.models import load_vit_gpt2, vit_gpt2_recipe


@dataclass
class Config(RunConfig):
    # Where this run writes its folder
    output_dir: str = "runs/task1_1"
    # Images captioned per batch
    batch_size: int = 64


def main(argv=None):
    cfg = parse_config(Config, argv, __doc__)
    processes = distributed.state(cfg)
    run = Run(cfg, "task1_1 (direct evaluation)", is_main=processes.is_main_process)
    model, processor, tokenizer = load_vit_gpt2(cfg.model, hf_token(cfg.hf_token))
    datasets = pixel_datasets(cfg, processor, ("valid", "test"))
    device = processes.device
    recipe = vit_gpt2_recipe(model, processor, tokenizer, cfg)
    metrics = evaluate_splits(run, cfg, recipe.caption, model.to(device), datasets, device,
                              info={"processes": processes.num_processes})
    if processes.is_main_process:
        print_metrics(run.method, metrics)
    return metrics


if __name__ == "__main__":
    run_main(main)
