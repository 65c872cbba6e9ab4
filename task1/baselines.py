"""Retrieval baselines: the titles of similar training photos, no captioner at all.

What does a captioner add over copying a title? Three answers, scored like every other run:
  nearest    the title of the training image nearest to the photo (cosine of a frozen encoder's features)
  consensus  of the k nearest training images' titles, the one that agrees most with the others
             (highest mean CIDEr-D; Devlin et al. 2015); k is chosen on the validation split
  constant   one training title for every photo: the one with the best validation CIDEr-D
The encoder's features come from the feature cache (computed once per image, shared with task2).

    python task1/baselines.py --data-dir data --method nearest --output-dir runs/nearest
    python task1/baselines.py --data-dir data --method consensus --encoder runs/vit_gpt2_finetuned
"""
from dataclasses import dataclass

import torch

from captioning.cache import encoder_fingerprint, feature_datasets
from captioning.config import RunConfig, choice, hf_token, parse_config, run_main
from captioning.engine import Run, evaluate_splits, print_metrics
from captioning.prefix_llm import DEFAULT_VISION, load_vision, recorded_name
from captioning.retrieval import Retrieval, embed


@dataclass
class Config(RunConfig):
    # Which baseline (pick one):
    #   "nearest"    the nearest training image's title
    #   "consensus"  the most agreed-on title among the k nearest (k chosen on validation unless --k)
    #   "constant"   the one training title with the best validation CIDEr-D, for every image
    method: str = choice("nearest", "consensus", "constant")
    # The frozen image encoder whose features measure similarity: a hub id, a model folder or a task1 run
    encoder: str = DEFAULT_VISION
    # Neighbours the consensus compares (0 = choose among 3, 5, 10, 20 on the validation split)
    k: int = 0
    # The constant title is chosen among this many most frequent training titles
    candidates: int = 200
    output_dir: str = "runs/baselines"
    # Images per batch when encoding and captioning
    batch_size: int = 256


def main(argv=None):
    cfg = parse_config(Config, argv, __doc__)
    run = Run(cfg, f"baseline: {cfg.method}" + (f" ({cfg.encoder.rstrip('/').split('/')[-1]} features)"
                                                 if cfg.method != "constant" else ""))
    encoder, processor = load_vision(cfg.encoder, hf_token(cfg.hf_token))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    data = feature_datasets(cfg, processor, encoder.to(device), encoder_key=encoder_fingerprint(encoder))
    train, valid = data["train"], data["valid"]
    retrieval = Retrieval(embed(train.arrays), [r.title for r in train.records],
                          [r.image_name for r in train.records])
    refs = [r.references for r in valid.records]
    info = {"encoder": cfg.encoder}
    if cfg.method == "consensus":
        k, scores = (cfg.k, {}) if cfg.k else retrieval.choose_k(
            embed(valid.arrays), [r.image_name for r in valid.records], refs)
        info.update(k=k, valid_cider_d_by_k=scores)
        print(f"consensus over the {k} nearest training titles" + (f" (validation CIDEr-D by k: {scores})"
                                                                   if scores else ""))
    elif cfg.method == "constant":
        title, score = retrieval.constant(refs, cfg.candidates)
        info.update(title=title, valid_cider_d=score)
        print(f"constant title: {title!r} (validation CIDEr-D {score:.3f})")

    settings = {"method": cfg.method, "encoder": recorded_name(cfg.encoder), "k": info.get("k"),
                "title": info.get("title")}

    def caption(model, batch, preset):  # the batch's titles are never read: only its features and names
        return retrieval.titles_for(embed(batch["features"].cpu()), batch["image_name"], settings)

    metrics = evaluate_splits(run, cfg, caption, torch.nn.Identity(), {"valid": valid, "test": data["test"]}, "cpu",
                              info=info)
    retrieval.save(run.dir / "best", **settings)  # load_captioner(run) titles new photos the same way
    print_metrics(run.method, metrics)
    return metrics


if __name__ == "__main__":
    run_main(main)
