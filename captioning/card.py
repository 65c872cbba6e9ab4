"""Model cards: a README.md in the Hugging Face Hub's format inside every run's best/ folder.

    write_card(run_dir)            best/README.md from the run's own files (nothing is loaded)
    python -m captioning.card RUN  the same for a run trained before cards existed

The card holds YAML metadata (pipeline tag, base model, dataset, metrics, the test scores as a
model-index), the test and validation metrics table, the training settings, how to use the model
(with transformers alone where the family allows it, and with `captioning.caption`) and its limits.
It reads config.json, metrics.json and best/captioner.json, so the engine writes it after the final
evaluation and a card can always be rebuilt from a finished run.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .config import SECRET_FIELDS, UserError, run_main
from .metrics import METRIC_KEYS

HUB_METRICS = {"BLEU-1": "bleu", "BLEU-2": "bleu", "BLEU-3": "bleu", "BLEU-4": "bleu", "METEOR": "meteor",
               "ROUGE-L": "rouge", "CIDEr": "cider"}
# Family -> (library_name on the Hub, how the weights are used without this toolkit)
LIBRARIES = {"vision-encoder-decoder": "transformers", "prefix-llm": "peft", "chat-vlm": "transformers"}
SKIP_SETTINGS = ("output_dir", "overwrite", "resume", "cache_dir", "workers", "report_to", "script")


def _json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return obj if isinstance(obj, dict) else {}


def is_hub_id(name) -> bool:
    """A name the Hub could know (owner/name), not a local path."""
    text = str(name or "")
    return text.count("/") == 1 and not text.startswith((".", "/", "~")) and not Path(text).exists()


def metrics_table(metrics: dict) -> str:
    rows = ["| split | images | " + " | ".join(METRIC_KEYS) + " |",
            "|---|---:|" + "---:|" * len(METRIC_KEYS)]
    for split in ("test", "valid"):
        m = metrics.get(split)
        if isinstance(m, dict):
            vals = [f"{m[k]:.4f}" if isinstance(m.get(k), (int, float)) else "?" for k in METRIC_KEYS]
            rows.append(f"| {split} | {m.get('images', '?')} | " + " | ".join(vals) + " |")
    return "\n".join(rows)


def settings_table(config: dict) -> str:
    rows = ["| setting | value |", "|---|---|"]
    for key, value in config.items():
        if key in SKIP_SETTINGS or SECRET_FIELDS.search(key):
            continue
        rows.append(f"| {key} | `{json.dumps(value)}` |")
    return "\n".join(rows)


def transformers_usage(family: str, repo: str, decoding: dict) -> str:
    """How to caption with the model through transformers (and peft) alone, for the families that allow it."""
    from .generation import generation_kwargs

    kwargs = generation_kwargs(decoding.get("preset", "beam"), int(decoding.get("max_new_tokens", 24)))
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    if family == "vision-encoder-decoder":
        return f"""```python
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer, VisionEncoderDecoderModel

model = VisionEncoderDecoderModel.from_pretrained("{repo}")
processor = AutoImageProcessor.from_pretrained("{repo}")
tokenizer = AutoTokenizer.from_pretrained("{repo}")
image = Image.open("dish.jpg").convert("RGB")
pixel_values = processor(images=image, return_tensors="pt").pixel_values
ids = model.generate(pixel_values, {args})
print(tokenizer.decode(ids[0], skip_special_tokens=True))
```"""
    return ("This model is not a single transformers model: it is "
            + ("a LoRA adapter (peft) on a causal LLM plus a projector that feeds it a frozen image encoder's "
               "features as a prefix; building that prefix is this toolkit's code "
               "(`captioning.prefix_llm.AnyModalCaptioner`), so use it through the toolkit as below."
               if family == "prefix-llm" else "use it through the toolkit as below."))


def card_text(run_dir: Path, repo: str | None = None) -> str:
    from huggingface_hub import EvalResult, ModelCardData

    from .captioner import MANIFEST

    run_dir = Path(run_dir)
    best = run_dir / "best"
    config, metrics = _json(run_dir / "config.json"), _json(run_dir / "metrics.json")
    manifest = _json(best / MANIFEST)
    family = manifest.get("family", "?")
    decoding = manifest.get("settings", {})
    info = metrics.get("info", {}) if isinstance(metrics.get("info"), dict) else {}
    base = config.get("model")
    if family == "prefix-llm":
        base = _json(best / "anymodal.json").get("llm", base)
    data = Path(str(config.get("data_dir", "data"))).name
    name = run_dir.resolve().name
    results = [EvalResult(task_type="image-to-text", task_name="Image captioning", dataset_type=data,
                          dataset_name=data, dataset_split=split, metric_type=HUB_METRICS[k],
                          metric_name=f"{k} ({split})", metric_value=round(float(m[k]), 4))
               for split in ("test",) if isinstance(m := metrics.get(split), dict)
               for k in METRIC_KEYS if isinstance(m.get(k), (int, float))]
    meta = ModelCardData(
        pipeline_tag="image-to-text", library_name=LIBRARIES.get(family, "transformers"),
        base_model=base if is_hub_id(base) else None, datasets=[data],
        metrics=sorted(set(HUB_METRICS.values())), tags=["image-captioning", "food", family],
        model_name=name, eval_results=results or None)
    repo = repo or str(best)
    preset = decoding.get("preset", info.get("preset", "beam"))
    trained_from = (f"`{base}`" if is_hub_id(base) else f"a local model folder (`{base}`)") if base else "?"
    test_n = (metrics.get("test") or {}).get("images", "?")
    return f"""---
{meta.to_yaml()}
---

# {name}

A food-photo captioner: it writes a recipe title for a photo of a dish. Method:
{info.get("method", config.get("method", "?"))}; family `{family}`; trained from {trained_from} with
`{config.get("script", "?")}` of the food-captioning toolkit. Titles are decoded with the `{preset}` preset
(at most {decoding.get("max_new_tokens", "?")} new tokens), the setting the metrics below were measured with.

## Metrics

Corpus-level scores by pycocoevalcap against the dataset's titles (normalised), on the test split
(scored once, with the epoch chosen on validation: epoch {info.get("best_epoch", "?")} of
{info.get("epochs_done", "?")} by {info.get("monitor", "?")}):

{metrics_table(metrics)}

## Training settings

{settings_table(config)}

## How to use

With the toolkit (any photo: files, folders, globs; `--top-k 3` for alternatives with scores):

```bash
python -m captioning.caption --model {repo} my_photos/
python -m captioning.app --model {repo}          # a web page on http://127.0.0.1:7860
```

With transformers alone:

{transformers_usage(family, repo, decoding)}

## Limits

- Trained on `{data}` only: it writes titles in that dataset's style, for photos of single dishes; other
  photos get a dish title anyway. English only.
- The metrics come from {test_n} test images of the same source as the training data; on other
  photos expect lower scores. SPICE and human judgement were not measured.
- It can be wrong about ingredients and counts, and it does not know about allergens or diets: do not
  use its titles for food safety.
- Models trained by `make demo` are tiny random-initialised stand-ins trained for seconds on synthetic
  drawings: their numbers show that the pipeline works, not how good a real model is.
"""


def write_card(run_dir, repo: str | None = None) -> Path:
    """Write run_dir/best/README.md (atomically); returns its path."""
    import os

    best = Path(run_dir) / "best"
    if not best.is_dir():
        raise UserError(f"{run_dir} has no best/ model to describe.")
    path = best / "README.md"
    tmp = best / f".README.md.tmp{os.getpid()}"
    tmp.write_text(card_text(Path(run_dir), repo))
    os.replace(tmp, path)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m captioning.card", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (each with best/ and metrics.json)")
    for run in p.parse_args(argv).runs:
        print(write_card(run))


if __name__ == "__main__":
    run_main(main)
