"""Fine-tune ViT-GPT2 with scheduled sampling: teacher forcing that gradually lets the decoder read
its own predictions (Bengio et al. 2015), done the way a transformer decoder allows.

Each step makes two decoder passes over one encoder output. The first, without gradients, is fed
the gold caption and gives the model's prediction (argmax) at every position. Each decoder input
token after the start token then stays gold with probability `teacher_forcing_ratio` and becomes
the model's prediction otherwise; the second pass reads this mixture and is trained against the
GOLD labels, so the model learns to recover from its own mistakes. The ratio decays on
RATIO_SCHEDULE from TEACHER_FORCING_RATIO to FINAL_RATIO over training; ratio 1 is plain teacher
forcing. Validation and test captions are free-running, as for every recipe.

How this differs from the original script: it replaced whole batches by the model's own beam-search
captions and used those as the LABELS, which rewards the model for repeating its own mistakes and
never shows it the gold caption for those batches. Here the labels are always the gold caption;
only some of the tokens the decoder reads come from the model.

    python task1/vit_gpt2_teacherF.py --data-dir data --output-dir runs/vit_gpt2_teacherF
"""
from dataclasses import dataclass

from captioning.config import TrainConfig, UserError, choice, hf_token, parse_config, preflight, run_main
from captioning.engine import train_and_evaluate
from captioning.models import freeze, load_vit_gpt2, vit_gpt2_datasets, vit_gpt2_recipe
from captioning.sampling import argmax_pick, gold_targets, ramp, scheduled_sampling_loss


@dataclass
class Config(TrainConfig):
    # Probability that a decoder input token is the gold one, at the start of training (1 = teacher forcing)
    teacher_forcing_ratio: float = 1.0
    # ... and at the end of training
    final_ratio: float = 0.75
    # How the ratio moves from the first value to the final one over training (pick one):
    #   "linear"          straight line
    #   "inverse_sigmoid" Bengio et al.'s S-curve: mostly gold for the first half, then falls
    #   "quadratic"       slow at first, fast at the end
    #   "constant"        keep TEACHER_FORCING_RATIO throughout
    ratio_schedule: str = choice("linear", "inverse_sigmoid", "quadratic", "constant")
    # What to train: "none" (everything), "vit" (freeze ViT), "gpt2" (freeze GPT-2), "gpt2-last4"
    freeze: str = choice("none", "vit", "gpt2", "gpt2-last4")
    # Where this run writes its folder
    output_dir: str = "runs/vit_gpt2_teacherF"


def main(argv=None):
    cfg = parse_config(Config, argv, __doc__)
    preflight(cfg)  # data and output folders checked before the model loads
    if not (0 <= cfg.teacher_forcing_ratio <= 1 and 0 <= cfg.final_ratio <= 1):
        raise UserError("--teacher-forcing-ratio and --final-ratio must lie between 0 and 1.")
    model, processor, tokenizer = load_vit_gpt2(cfg.model, hf_token(cfg.hf_token))
    freeze(model, cfg.freeze)
    datasets = vit_gpt2_datasets(cfg, model, processor)  # --freeze vit: the feature cache
    recipe = vit_gpt2_recipe(model, processor, tokenizer, cfg, decoder_mask=True)

    def loss(model, batch, state):
        ratio = ramp(state.progress, cfg.ratio_schedule, cfg.teacher_forcing_ratio, cfg.final_ratio)
        labels, mask = gold_targets(tokenizer, batch, cfg.max_length)
        enc = recipe.encoded(model, batch)  # shared by both decoder passes
        return scheduled_sampling_loss(model, enc, labels, mask, ratio, argmax_pick)

    recipe.loss = loss
    method = (f"vit_gpt2_teacherF (scheduled sampling {cfg.teacher_forcing_ratio:g}->{cfg.final_ratio:g} "
              f"{cfg.ratio_schedule})")
    return train_and_evaluate(cfg, recipe, datasets, method)


if __name__ == "__main__":
    run_main(main)
