"""The whole pipeline, offline, on synthetic food pictures and tiny models (`make demo`).

Stages: synthetic data + tiny models -> cleaning (imageCleaning/preprocess, into RUNS_DIR/cleaning;
later stages use its CSVs) -> direct evaluation of the untrained model (task1_1) ->
fine-tuning (vit_gpt2_finetuned) -> SCST from its best model (vit_gpt2_finetuned_RL) -> task2: the
fine-tuned ViT frozen + projector + tiny Llama with LoRA (llama_lora), then inference with that run
(inferllama) -> retrieval baselines (nearest, consensus, constant: titles copied from similar training
photos) -> BLIP fine-tuned (blip) -> DeepSeek-VL zero-shot, then fine-tuned with LoRA (vlm_lora) -> the
caption command checked against every trained run's predictions.csv -> test scores (n-gram metrics,
CLIPScore and BERTScore with a tiny CLIP and BERT, exact match, novelty, diversity) -> report (table,
gallery, curves); every best/ model gets a model card (best/README.md). Each stage writes its run into
RUNS_DIR/<script name>/. The tiny models are random-weight stand-ins for the real checkpoints, so the
numbers show the pipeline works, not how good the real models are.

    python demo.py [--runs-dir demo_runs] [--data-dir EXISTING_DATASET [--images-dir IMAGES] | --dataset ID]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from captioning.config import run_main  # noqa: E402

# Settings for tiny random models (pretrained checkpoints want lr 1e-5..1e-4 and fewer epochs).
# The demo must fit 6 minutes on a slow 2-core machine: this one ran the same demo in 321 s and, an hour
# later and otherwise idle, in 439 s (2026-11-30). Cross-entropy: 24 epochs at lr 5e-3, test BLEU-4 0.705 /
# CIDEr 5.80 (30: 0.788 / 6.94; 40 at 3e-3: 0.834 / 7.64), measured on the synthetic data on 2026-11-30.
TINY_TRAIN = ["--lr", "5e-3", "--batch-size", "32", "--epochs", "24", "--restart-epochs", "24",
              "--eval-every", "12", "--patience", "0", "--workers", "0", "--preset", "greedy"]
# SCST from the fine-tuned tiny model: 1 epoch at the tiny model's lr (a checkpoint wants ~1e-5), 8 samples
# per image against the mean of the others (chosen on a 2000-image validation split: bench/scst_gain.py).
TINY_SCST = ["--lr", "2e-4", "--batch-size", "32", "--epochs", "1", "--restart-epochs", "1", "--baseline", "mean",
             "--samples", "8", "--patience", "0", "--workers", "0", "--preset", "greedy"]
# BLIP: the random tiny vision tower frozen (features cached), its text decoder trained in full at a tiny
# model's lr (a LoRA adapter on a random decoder learns too little; the checkpoint's default is LoRA r16).
TINY_BLIP = ["--lora", "none", "--lr", "3e-3", "--batch-size", "32", "--epochs", "10", "--restart-epochs", "10",
             "--eval-every", "10", "--patience", "0", "--workers", "0", "--preset", "greedy", "--max-new-tokens", "16"]
# The tiny DeepSeek-VL hybrid with a LoRA adapter on its language model, vision side cached; a short question
# (the tiny tokenizer spells long ones letter by letter).
TINY_VLM = ["--lora", "r64", "--lr", "3e-3", "--batch-size", "16", "--epochs", "4", "--restart-epochs", "4",
            "--eval-every", "4", "--patience", "0", "--workers", "0", "--question", "Title:", "--max-new-tokens", "12"]
# task2 on the tiny Llama: LoRA + projector at a tiny model's lr; 4x4 pooled image tokens keep steps short.
TINY_LLAMA = ["--lr", "3e-3", "--batch-size", "32", "--epochs", "8", "--restart-epochs", "8",
              "--eval-every", "4", "--patience", "0", "--workers", "0", "--preset", "greedy", "--pool", "4x4",
              "--max-new-tokens", "16"]


def load_script(relpath: str):
    """Import a recipe script (task1/..., task2/...) as a module, so stages share one process."""
    path = ROOT / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script executes
    spec.loader.exec_module(module)
    return module


class Demo:
    def __init__(self, runs_dir: Path, data_dir: Path, models: Path, images: Path):
        self.runs, self.data, self.models = runs_dir, data_dir, models
        self.images = images  # stays the original folder when a stage rewrites the CSVs
        self.times: dict[str, float] = {}

    def common(self, name: str) -> list[str]:
        # the tiny CLIP and BERT stand in for openai/clip-vit-base-patch32 and roberta-large in every score
        return ["--data-dir", str(self.data), "--images-dir", str(self.images),
                "--output-dir", str(self.runs / name), "--overwrite", "--cache-dir", str(self.runs / ".cache"),
                "--clip-model", str(self.models / "clip"), "--bertscore-model", str(self.models / "bert")]

    def stage(self, name: str, script: str, *args: str, common: bool = True):
        """Run one recipe in this process (one METEOR JVM, one torch import for all stages)."""
        print(f"\n=== {name}: {script} ===", flush=True)
        t0 = time.time()
        out = load_script(script).main((self.common(name) if common else []) + list(args))
        self.times[name] = time.time() - t0
        return out

    def metrics(self, name: str) -> dict:
        return json.loads((self.runs / name / "metrics.json").read_text())


def pick_data(a, runs: Path) -> tuple[Path, Path, str]:
    """(data folder, images folder, what the results table says they are) for the demo's options."""
    from captioning.config import UserError
    from captioning.data import data_folders

    if a.dataset or a.data_dir:
        if a.dataset and a.data_dir:
            raise UserError("pass --data-dir or --dataset, not both.")
        opts = argparse.Namespace(dataset=a.dataset or "", data_dir=a.data_dir or "",
                                  images_dir=a.images_dir or "", cache_dir=str(runs / ".cache"))
        data, images = data_folders(opts)
        if not images.is_dir():
            raise UserError(f"images folder {images} does not exist (set --images-dir).")
        return data, images, f"your data ({a.dataset or a.data_dir})"
    if a.images_dir:
        raise UserError("--images-dir goes with --data-dir.")
    return runs / "data", runs / "data" / "images", "synthetic data"


def check_caption_command(demo: Demo) -> None:
    """`python -m captioning.caption --model RUN` on a trained run's test images must give exactly the
    titles of its predictions.csv: checked for every run with a best/ model (the model's own preset)."""
    from captioning.caption import check_run
    from captioning.config import UserError

    print("\n=== the caption command reproduces every trained run's predictions.csv ===", flush=True)
    t0 = time.time()
    bad = []
    for best in sorted(demo.runs.glob("*/best")):
        if (best.parent / "predictions.csv").exists():
            c = check_run(best.parent)
            print(f"  {c['run']}: {c['same']} of {c['total']} test titles equal")
            bad += [f"{c['run']} {name}: {want!r} vs {got!r}" for name, want, got in c["differ"][:3]]
    demo.times["caption check"] = time.time() - t0
    if bad:
        raise UserError("the caption command's titles differ from predictions.csv: " + "; ".join(bad))


def _fmt(value) -> str:
    return "skipped" if value is None else f"{value:.3f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs-dir", default="demo_runs", help="where each stage writes its run (default demo_runs)")
    p.add_argument("--data-dir", help="use this existing dataset (standard layout) instead of synthetic data")
    p.add_argument("--images-dir", help="its images (default DATA_DIR/images; a cleaned folder has none of its own)")
    p.add_argument("--dataset", help="or a Hugging Face dataset: hub id or local imagefolder (see README)")
    p.add_argument("--n", type=int, default=2500, help="synthetic images to draw (default 2500)")
    p.add_argument("--seed", type=int, default=0, help="synthetic data seed (default 0)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: tiny models gain little from more, and lose a lot on a busy CPU)")
    a = p.parse_args(argv)
    t_start = time.time()
    import torch

    torch.set_num_threads(max(1, a.threads))
    runs = Path(a.runs_dir)
    runs.mkdir(parents=True, exist_ok=True)
    from captioning import synthetic

    data, images, label = pick_data(a, runs)
    if label == "synthetic data":
        info = synthetic.make_dataset(data, a.n, a.seed)
        print(f"synthetic data: {info['splits']} + {len(info['dirty'])} dirty entries in {data}")
    built: dict[str, float] = {}
    models = synthetic.build_models(data, runs / "models", built)
    print("tiny models built in " + ", ".join(f"{name} {secs:.1f} s" for name, secs in built.items()))
    print(f"tiny models and tokenizer: {models}")
    demo = Demo(runs, data, models, images)
    vit_gpt2 = str(models / "vit-gpt2")

    cleaned = runs / "cleaning"
    demo.stage("cleaning", "imageCleaning/preprocess.py", "--data-dir", str(demo.data), "--images-dir",
               str(demo.images), "--out", str(cleaned), "--workers", "2", common=False)
    demo.data = cleaned  # later stages use the cleaned CSVs; demo.images stays the original folder

    demo.stage("task1_1", "task1/task1_1.py", "--model", vit_gpt2, "--preset", "greedy")
    demo.stage("vit_gpt2_finetuned", "task1/vit_gpt2_finetuned.py", "--model", vit_gpt2, *TINY_TRAIN)
    best = str(runs / "vit_gpt2_finetuned" / "best")
    demo.stage("vit_gpt2_finetuned_RL", "task1/vit_gpt2_finetuned_RL.py", "--model", best, *TINY_SCST)
    xe, rl = (demo.metrics(n)["test"]["CIDEr"] for n in ("vit_gpt2_finetuned", "vit_gpt2_finetuned_RL"))
    print(f"SCST after cross-entropy, same greedy decoding: test CIDEr {xe:.3f} -> {rl:.3f}")
    for name in ("task1_1", "vit_gpt2_finetuned"):  # what a person would see: right titles, varied titles
        m = demo.metrics(name)["test"]
        print(f"{name}: test RefCLIPScore {_fmt(m.get('RefCLIPScore'))}, BERTScore {_fmt(m.get('BERTScore'))}, "
              f"exact match {_fmt(m.get('ExactMatch'))}, distinct titles {_fmt(m.get('Distinct'))}, "
              f"most frequent title's share {_fmt(m.get('TopShare'))}")

    # task2: the encoder fine-tuned above, frozen (features cached) + projector + tiny Llama with LoRA
    demo.stage("llama_lora", "task2/train.py", "--model", str(models / "llama"), "--vision-model", best,
               *TINY_LLAMA)
    demo.stage("inferllama", "task2/inferllama.py", "--run", str(runs / "llama_lora"), "--preset", "greedy",
               "--max-new-tokens", "16", "--workers", "0")

    # what a captioner adds over copying titles: the fine-tuned ViT's features (already in the feature cache)
    for method in ("nearest", "consensus", "constant"):
        demo.stage(method, "task1/baselines.py", "--method", method, "--encoder", best, "--workers", "0")
    demo.stage("blip", "task1/blip.py", "--model", str(models / "blip"), *TINY_BLIP)

    print("\n[deepseek] RANDOM-WEIGHT STAND-IN: a tiny untrained DeepSeek-VL hybrid that takes the real "
          "model's path (class from its config, chat template, batched generation, title cleaner); "
          "its titles are noise.")
    demo.stage("deepseek", "task2/deepseek.py", "--model", str(models / "deepseek-vl"), "--limit", "48",
               "--max-new-tokens", "12")
    demo.stage("vlm_lora", "task2/vlm_lora.py", "--model", str(models / "deepseek-vl"), *TINY_VLM)

    check_caption_command(demo)
    from captioning.report import report

    out = report(runs)
    print(f"\n=== results (tiny random-init models on {label}) ===")
    print(out["table"], end="")
    for name, secs in demo.times.items():
        print(f"  {name}: {secs:.0f} s")
    new = sum(demo.metrics(n)["info"].get("eval_seconds", {}).get(split, {}).get("new metrics", 0)
              for n in demo.times for split in ("valid", "test") if (runs / n / "metrics.json").exists())
    print(f"  scores beyond n-grams (CLIPScore, BERTScore, title figures), all runs: {new:.1f} s")
    print(f"gallery: {out['gallery']}\ncurves:  {out['curves']}\ntable:   {out['results']}")
    print(f"demo finished in {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    run_main(main)
