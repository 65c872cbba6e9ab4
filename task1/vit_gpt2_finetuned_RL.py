"""Self-critical sequence training (SCST, Rennie et al. 2017) of a fine-tuned ViT-GPT2 captioner.

Start from a model fine-tuned with cross-entropy (--model RUN/best). Each step encodes the images
once, samples SAMPLES captions per image (top-p), scores them with the reward (CIDEr-D with
document frequencies from the training titles, METEOR, CLIPScore against the image, or a mix) against
a baseline (the greedy caption's reward, or the mean of the image's other samples), and minimises
    loss = (1 - alpha) * XE + alpha * SCST,   SCST = -mean((reward - baseline) * log p(sample))
with alpha moving from ALPHA_START to ALPHA_END on ALPHA_SCHEDULE. Log-probabilities stop at each
sample's first EOS. The ViT encoder stays frozen by default, as in the original; its outputs then
come from the feature cache, computed once per image.

    python task1/vit_gpt2_finetuned_RL.py --model runs/vit_gpt2_finetuned/best --data-dir data \\
        --output-dir runs/vit_gpt2_finetuned_RL
"""
from dataclasses import dataclass
from pathlib import Path

from captioning.config import TrainConfig, UserError, choice, hf_token, parse_config, preflight, run_main
from captioning.distributed import gather, is_main
from captioning.engine import train_and_evaluate
from captioning.models import freeze, load_vit_gpt2, vit_gpt2_datasets, vit_gpt2_recipe
from captioning.sampling import gold_targets, ramp, teacher_forcing_loss
from captioning.scst import clip_reward, make_reward, scst_step


@dataclass
class Config(TrainConfig):
    # The cross-entropy fine-tuned model SCST starts from: a run's best/ folder (or a captioning hub model)
    model: str = "runs/vit_gpt2_finetuned/best"
    # Where this run writes its folder
    output_dir: str = "runs/vit_gpt2_finetuned_RL"
    # Passes over the training split (SCST refines a trained model: a few are enough)
    epochs: int = 3
    # Peak AdamW learning rate (pretrained checkpoints: ~1e-5; the demo's tiny model: ~5e-4)
    lr: float = 1e-5
    # What to train: "vit" (freeze ViT, as in the original), "none", "gpt2" (freeze GPT-2), "gpt2-last4"
    freeze: str = choice("vit", "none", "gpt2", "gpt2-last4")
    # Captions sampled per image (they share one encoder pass)
    samples: int = 5
    # Sampling: keep the smallest token set holding TOP_P of the probability, at this temperature
    top_p: float = 0.9
    temperature: float = 1.0  # sampling temperature (1 = the model's own distribution)
    # Baseline subtracted from each sample's reward (pick one):
    #   "greedy"  the reward of the greedy caption (Rennie et al. 2017)
    #   "mean"    the mean reward of the image's other samples (Luo 2020); no greedy decoding
    baseline: str = choice("greedy", "mean")
    # Reward (pick one):
    #   "cider"       CIDEr-D, document frequencies computed once from the training titles
    #   "meteor"      METEOR (the original's choice), one long-lived Java process scoring a batch per call
    #   "mix"         (1 - METEOR_WEIGHT) * CIDEr-D + METEOR_WEIGHT * METEOR
    #   "clip"        CLIPScore of the caption against its image (CLIP_MODEL; needs no reference, which
    #                 helps where each image has one title)
    #   "cider+clip"  (1 - CLIP_WEIGHT) * CIDEr-D + CLIP_WEIGHT * CLIPScore
    reward: str = choice("cider", "meteor", "mix", "clip", "cider+clip")
    meteor_weight: float = 0.5  # used by "mix" only
    clip_weight: float = 0.5  # used by "cider+clip" only
    # Weight alpha of the SCST term (1 - alpha goes to cross-entropy) at the start and end of training
    alpha_start: float = 0.9
    alpha_end: float = 1.0  # alpha at the end of training
    # How alpha moves: "linear", "quadratic" (slow at first), "inverse_sigmoid", "constant" (ALPHA_START)
    alpha_schedule: str = choice("linear", "quadratic", "inverse_sigmoid", "constant")


def main(argv=None):
    cfg = parse_config(Config, argv, __doc__)
    preflight(cfg)  # data and output folders checked before the model loads
    if cfg.samples < 1 or (cfg.baseline == "mean" and cfg.samples < 2):
        raise UserError("--samples must be at least 1 (at least 2 with --baseline mean).")
    if not (0 < cfg.top_p <= 1 and cfg.temperature > 0):
        raise UserError("--top-p must lie in (0, 1] and --temperature above 0.")
    if not all(0 <= w <= 1 for w in (cfg.alpha_start, cfg.alpha_end, cfg.meteor_weight, cfg.clip_weight)):
        raise UserError("--alpha-start, --alpha-end, --meteor-weight and --clip-weight must lie between 0 and 1.")
    if Path(cfg.model).name == "best" and not Path(cfg.model).exists():
        raise UserError(f"SCST starts from a fine-tuned model, but {cfg.model} does not exist: run "
                        "task1/vit_gpt2_finetuned.py first or pass --model.")
    model, processor, tokenizer = load_vit_gpt2(cfg.model, hf_token(cfg.hf_token))
    freeze(model, cfg.freeze)
    datasets = vit_gpt2_datasets(cfg, model, processor)  # --freeze vit: the feature cache
    if len(datasets["train"]) == 0:  # the CIDEr-D reward needs the training titles
        raise UserError("the train split has no usable images; training needs them to train on.")
    clip = clip_reward(cfg, datasets["train"].records) if "clip" in cfg.reward else None
    reward = make_reward(cfg.reward, [r.references for r in datasets["train"].records], cfg.meteor_weight,
                         clip, cfg.clip_weight)
    recipe = vit_gpt2_recipe(model, processor, tokenizer, cfg, decoder_mask=True)
    seen = {}  # epoch -> [steps, sum of mean sampled reward, sum of mean baseline]

    def loss(model, batch, state):
        alpha = ramp(state.progress, cfg.alpha_schedule, cfg.alpha_start, cfg.alpha_end)
        enc = recipe.encoded(model, batch)  # shared by sampling, baseline, XE and gradient
        seeds = [(cfg.seed, state.epoch, i) for i in batch["index"]]  # an image's samples: whichever process
        out = scst_step(model, enc, batch["references"], tokenizer, reward, cfg.samples, cfg.baseline,
                        cfg.top_p, cfg.temperature, cfg.max_new_tokens, seeds,
                        images=batch["index"])
        s = seen.setdefault(state.epoch + 1, [0, 0.0, 0.0])
        s[0], s[1], s[2] = s[0] + 1, s[1] + out.reward, s[2] + out.baseline
        if alpha >= 1:
            return out.loss
        labels, mask = gold_targets(tokenizer, batch, cfg.max_length)
        return (1 - alpha) * teacher_forcing_loss(model, enc, labels, mask) + alpha * out.loss

    recipe.loss = loss
    method = f"vit_gpt2_finetuned_RL (SCST {cfg.reward}, {cfg.baseline} baseline, after XE)"
    metrics = train_and_evaluate(cfg, recipe, datasets, method)
    seen = gather(sorted(seen.items()))  # every process's steps: the summary covers the whole split
    if is_main():
        for epoch in sorted({e for e, _ in seen}):
            n, r, b = (sum(s[i] for e, s in seen if e == epoch) for i in range(3))
            print(f"epoch {epoch}: mean sampled {cfg.reward} reward {r / n:.3f}, mean baseline {b / n:.3f}")
    return metrics


if __name__ == "__main__":
    run_main(main)
