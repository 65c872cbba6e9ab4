"""Task 2 inference: caption images with a trained task2 run (LoRA adapter + projector) and score them.

Rebuilds the captioner from the run (base Llama + adapter + projector), checks that the frozen image
encoder still has the weights the adapter was trained on, reads its features from the feature cache
(computing only what is missing), and captions in batches. On a split it writes predictions.csv and
metrics.json; on a folder of new photos (--photos) it writes predictions.csv and a metrics.json that
says what was captioned (nothing is scored without references).

    python task2/inferllama.py --run runs/llama_lora --data-dir data --output-dir runs/inferllama
    python task2/inferllama.py --run runs/llama_lora --photos my_photos/ --output-dir runs/my_photos
    accelerate launch task2/inferllama.py ...      # several GPUs: each captions a share of the batches
"""
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # so `python task2/inferllama.py` and demo.load_script both find the modules
    sys.path.insert(0, _HERE)

from anymodal import AnyModalCaptioner, anymodal_recipe  # noqa: E402
from captioning import distributed  # noqa: E402
from captioning.cache import feature_cache, feature_datasets  # noqa: E402
from captioning.config import RunConfig, UserError, choice, hf_token, parse_config, run_main  # noqa: E402
from captioning.data import CaptionDataset, folder_records  # noqa: E402
from captioning.engine import Run, evaluate_splits, generate_split, print_metrics  # noqa: E402
from captioning.prefix_llm import matching_encoder  # noqa: E402


@dataclass
class Config(RunConfig):
    # The trained task2 run (its best/ is used), or a folder holding anymodal.json
    run: str = "runs/llama_lora"
    # Which split to caption and score: "test", "valid" or "both"
    split: str = choice("test", "valid", "both")
    # A folder of your own photos to caption instead of a split (no references, so no scores;
    # the old name --images still works)
    photos: str = field(default="", metadata={"aliases": ("--images",)})
    # Base LLM under the adapter (empty: the one the run recorded; set it when the run moved machines)
    model: str = ""
    # The frozen image encoder (empty: the one the run recorded; it must have the same weights)
    vision_model: str = ""
    output_dir: str = "runs/inferllama"
    # Images captioned per batch
    batch_size: int = 32


def main(argv=None):
    cfg = parse_config(Config, argv, __doc__)
    token = hf_token(cfg.hf_token)
    processes = distributed.state(cfg)
    if not Path(cfg.run).is_dir():
        raise UserError(f"run folder {cfg.run} does not exist; pass --run with a folder written by "
                        "task2/train.py.")
    model = AnyModalCaptioner.load(cfg.run, token, cfg.model or None)
    encoder, processor, fingerprint = matching_encoder(model, cfg.vision_model or None, token)
    trained = int(model.settings.get("max_length", 0))
    if cfg.max_new_tokens < trained and processes.is_main_process:
        print(f"note: --max-new-tokens {cfg.max_new_tokens} is below the {trained} tokens {cfg.run} trained on: "
              "longer captions are cut", file=sys.stderr)
    device = processes.device  # the encoder moves there only if the feature cache has to compute something
    model = model.to(device)
    run = Run(cfg, f"inferllama ({Path(cfg.run).name}, {cfg.preset})", is_main=processes.is_main_process)
    caption = anymodal_recipe(model, cfg, token).caption
    metrics = {}
    if cfg.photos:
        records = folder_records(cfg.photos)
        arr, kept, _ = feature_cache(records, processor, encoder, cfg.cache_dir or None, cfg.workers,
                                     desc="images", encoder_key=fingerprint)
        dataset = CaptionDataset(kept, arr, key="features")
        predictions = generate_split(caption, model, dataset, cfg, cfg.preset, device, "captioning")
        run.write_predictions(kept, predictions)
        for record, text in list(zip(kept, predictions))[:10] if processes.is_main_process else []:
            print(f"{record.image_name}: {text}")
        # the run's last file: a second run into this folder then knows it is finished
        info = {"method": run.method, "preset": cfg.preset, "photos": cfg.photos, "images": len(kept),
                "scored": False, "trained_run": str(Path(cfg.run).resolve())}
        run.write_json("metrics.json", {"info": info})
    else:
        splits = ("valid", "test") if cfg.split == "both" else (cfg.split,)
        datasets = feature_datasets(cfg, processor, encoder, splits, encoder_key=fingerprint)
        metrics = evaluate_splits(run, cfg, caption, model, datasets, device,
                                  info={"processes": processes.num_processes})
    stats = distributed.sum_counts(model.stats)  # every process's captions
    if processes.is_main_process:
        if not cfg.photos:
            eos = {"captions": stats.get("captions", 0),
                   "ended_with_eos": stats.get("ended_with_eos", 0) / max(1, stats.get("captions", 0))}
            saved = json.loads((run.dir / "metrics.json").read_text())  # keeps evaluate_splits' caption spread
            saved["info"].update(trained_run=str(Path(cfg.run).resolve()), **eos)
            run.write_json("metrics.json", saved)
            print_metrics(run.method, metrics)
        print(f"{stats.get('ended_with_eos', 0)} of {stats.get('captions', 0)} captions ended with EOS "
              f"(the rest reached --max-new-tokens {cfg.max_new_tokens}); written to {run.dir}")
    return metrics


if __name__ == "__main__":
    run_main(main)
