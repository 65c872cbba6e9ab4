"""The one training loop behind every recipe, and the run folder it writes.

A recipe hands the engine a `Recipe` (model + loss + caption + save/load functions) and the
datasets; `train_and_evaluate` then runs: accelerate (CPU, GPU, bf16, `accelerate launch`),
gradient accumulation, AdamW + cosine warm restarts, validation by free-running generation every
N epochs, early stopping on a validation metric, an atomic checkpoint every epoch (`--resume`
continues after a kill and ends with the same numbers), and the final valid/test evaluation of
the best epoch.

Run folder (runs/<name>/): config.json, log.jsonl (one line per epoch), metrics.json
({"valid": {...}, "test": {...}, "info": {...}}), predictions.csv (test: Image_Name, reference,
prediction), predictions_valid.csv, checkpoint/ (resumable state), best/ (the best epoch's model).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import distributed
from .card import write_card
from .config import RUN_FILES, UserError, keep_freed_memory, refuse_clobber, to_dict
from .data import collate
from .loading import load_errors
from .metrics import caption_spread, collapse_warning, evaluate_captions


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------- run folder
class Run:
    """The folder of one run. Refuses to clobber a previous run unless told to."""

    def __init__(self, cfg, method: str, is_main: bool = True, resume: bool = False):
        self.dir = Path(cfg.output_dir)
        self.method, self.is_main = method, is_main
        present = [f for f in RUN_FILES if (self.dir / f).exists()]
        refuse_clobber(self.dir, cfg.overwrite, resume, resumable=hasattr(cfg, "resume"))
        if not is_main:
            return
        if cfg.overwrite and not resume:
            for f in present:
                p = self.dir / f
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = self.dir / f".write-test-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise UserError(f"cannot write to output folder {self.dir} ({e.strerror}).") from None
        info = {"method": method, "script": Path(sys.argv[0]).name, **to_dict(cfg)}
        atomic_write_text(self.dir / "config.json", json.dumps(info, indent=2))

    def log(self, row: dict) -> None:
        if self.is_main:
            with open(self.dir / "log.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")

    def read_log(self) -> list[dict]:
        p = self.dir / "log.jsonl"
        rows = []
        for line in p.read_text(errors="replace").splitlines() if p.exists() else []:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a kill or a full disk
                continue
        return rows

    def truncate_log(self, epochs_done: int) -> None:
        """Drop log lines of epochs that the checkpoint does not hold (a kill between the two)."""
        if self.is_main:
            rows = [r for r in self.read_log() if r.get("epoch", 0) <= epochs_done]
            atomic_write_text(self.dir / "log.jsonl", "".join(json.dumps(r) + "\n" for r in rows))

    def write_json(self, name: str, obj) -> None:
        if self.is_main:
            atomic_write_text(self.dir / name, json.dumps(obj, indent=2))

    def write_predictions(self, records, predictions, name="predictions.csv") -> None:
        if not self.is_main:
            return
        df = pd.DataFrame({"Image_Name": [r.image_name for r in records],
                           "reference": [r.title for r in records], "prediction": predictions})
        if any(len(r.references) > 1 for r in records):
            df["references"] = [json.dumps(r.references) for r in records]
        tmp = self.dir / f".{name}.tmp"
        df.to_csv(tmp, index=False)
        os.replace(tmp, self.dir / name)


# --------------------------------------------------------------------------------------- recipe
@dataclass
class TrainState:
    epoch: int  # 0-based epoch in progress
    step: int  # optimiser steps taken so far
    total_steps: int
    progress: float  # fraction of training done, 0..1 (drives schedules)


@dataclass
class Recipe:
    """What a script gives the engine.

    loss(model, batch, state) -> scalar loss; caption(model, batch, preset) -> list of captions;
    save(model, folder) writes the best model; load(folder) -> model for the final evaluation.
    A loss that averages over tokens (or samples) should average over every process's, with
    distributed.global_mean(sum, count): under several processes that is the single-process loss.
    """
    model: torch.nn.Module
    loss: Callable
    caption: Callable
    save: Callable
    load: Callable
    collate: Callable = collate


class EpochSampler(torch.utils.data.Sampler):
    """Shuffles with seed + epoch, so an epoch's order never depends on what ran before it."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def __iter__(self):
        return iter(np.random.default_rng(self.seed * 1000 + self.epoch).permutation(self.n).tolist())

    def __len__(self):
        return self.n


def precision(cfg) -> str:
    """cfg.mixed_precision resolved: "auto" is bf16 on a GPU that supports it, else "no" (fp32).
    On a CPU with native bf16 (AVX512-BF16, AMX), --mixed-precision bf16 trains several times faster."""
    mp = getattr(cfg, "mixed_precision", "auto")
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return mp


def scoring_settings(cfg) -> dict:
    """How a run is scored, as its best/ manifest records it (captioner.write_manifest): the preset, the
    caption length and, when the evaluation runs under bf16/fp16 autocast, that precision."""
    settings = {"preset": cfg.preset, "max_new_tokens": cfg.max_new_tokens}
    if precision(cfg) in ("bf16", "fp16"):
        settings["autocast"] = precision(cfg)
    return settings


def make_adamw(params, cfg):
    """AdamW fused into one kernel where torch has one for these parameters (the same update; on a CPU
    several times faster than the per-tensor default), else the default implementation."""
    try:
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_accelerator(cfg, project_dir=None):
    """The run's Accelerator; a tracker (--report-to) logs into `project_dir`, by default the run folder."""
    from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs, InitProcessGroupKwargs

    mp = precision(cfg)
    kwargs = {}
    report = getattr(cfg, "report_to", "none")
    if report != "none":
        import importlib.util

        pkg = {"tensorboard": "tensorboard", "wandb": "wandb"}[report]
        if importlib.util.find_spec(pkg) is None:
            raise UserError(f"--report-to {report} needs the {pkg} package: pip install {pkg}.")
        kwargs.update(log_with=report, project_dir=str(project_dir or cfg.output_dir))
    # Several processes (accelerate launch, torchrun) on a machine without a GPU join one gloo group
    # only when accelerate is told cpu=True; otherwise each would train alone on all the data.
    join = distributed.init_kwargs(cfg)
    distributed.state(cfg)  # the caches may have started it already; the same settings either way
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != mp:
        # a later run in the same process (the demo's stages, a notebook, the tests) with another precision:
        # accelerate keeps one per process and refuses a change; the process group (PartialState) stays
        AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(
        mixed_precision=mp, gradient_accumulation_steps=getattr(cfg, "grad_accum", 1),
        dataloader_config=DataLoaderConfiguration(split_batches=True), cpu=join["cpu"],
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True),
                         InitProcessGroupKwargs(timeout=join["timeout"])], **kwargs)
    if accelerator.device.type == "cpu":
        # Denormal floats (below 1.2e-38: AdamW's second moments of rarely-updated weights decay into them)
        # cost x86 CPUs ~100x per operation: the demo's tiny ViT-GPT2 epochs slowed from 4 s to 10 s as
        # training went on. Flushing them to zero changes nothing a result depends on (eps is 1e-8).
        # GPUs flush in their own kernels; this is the process's CPU setting, left on afterwards.
        torch.set_flush_denormal(True)
        keep_freed_memory()  # a bench_train step at ViT-B widths: 1.13 -> 0.95 s (250,000 page faults a step)
    return accelerator


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _set_seed(seed: int) -> None:
    from accelerate.utils import set_seed

    set_seed(seed)


def _frozen_children_to_eval(model) -> None:
    for child in model.children():
        params = list(child.parameters())
        if params and not any(p.requires_grad for p in params):
            child.eval()


# ------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def generate_split(caption_fn, model, dataset, cfg, preset: str, device, desc: str, collate_fn=collate):
    """Free-running captions for every item of `dataset`, in order, batched (in bf16/fp16 autocast when
    the run trains in it: precision(cfg)).

    Under several processes each captions a contiguous share of the batches (distributed.my_batches) and
    every process returns all captions, in order. Each batch draws from its own seed (seed + batch
    number), so nucleus captions do not depend on how many processes share the work."""
    model.eval()
    mine = distributed.my_batches(len(dataset), cfg.batch_size)
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision(cfg))
    preds = []
    main = distributed.rank_and_world()[0] == 0
    for number, items in tqdm(mine, desc=desc, leave=False, unit="batch", mininterval=1, disable=not main):
        _set_seed(cfg.seed + number)
        batch = collate_fn([dataset[i] for i in items])
        with torch.autocast(torch.device(device).type, dtype=half, enabled=half is not None):
            preds.extend(caption_fn(model, to_device(batch, device), preset))
    return distributed.gather(preds)


def score(dataset, predictions) -> dict:
    """The metrics of one split, with the number of images scored (a --limit run says so)."""
    return {**evaluate_captions(predictions, [r.references for r in dataset.records]), "images": len(predictions)}


def on_main(fn, *args, **kwargs):
    """fn(*args, **kwargs) computed by the main process only (one METEOR process, one copy of the
    scoring models), the result sent to every process."""
    out = [None]
    if distributed.rank_and_world()[0] == 0:
        out = [fn(*args, **kwargs)]
    if distributed.started():
        import torch.distributed as dist

        dist.broadcast_object_list(out, src=0)
    return out[0]


def score_on_main(dataset, predictions) -> dict:
    """score() computed by the main process only, the result sent to every process."""
    return on_main(score, dataset, predictions)


def training_titles(cfg, datasets: dict) -> list[str] | None:
    """The training split's titles (for the novelty figure): from the loaded train split, else read
    from DATA_DIR/train_data.csv; None when there is none."""
    from .data import data_folders, read_csv, split_csv
    from .text import normalize

    train = datasets.get("train")
    if train is not None and len(train):
        return [r.title for r in train.records]
    try:  # --data-dir, or the layout of --dataset
        return [normalize(t) for t in read_csv(split_csv(data_folders(cfg)[0], "train"))["Title"]]
    except UserError:
        return None


def evaluate_splits(run: Run, cfg, caption_fn, model, datasets: dict, device, collate_fn=collate,
                    info: dict | None = None) -> dict:
    """Caption valid and test with cfg.preset, score them (n-gram metrics, CLIPScore, RefCLIPScore,
    BERTScore, exact match, novelty, diversity: semantic.evaluate_all), write predictions and
    metrics.json; returns metrics. metrics.json's info says how each model-based score was computed
    (or why it was skipped) and the seconds spent captioning and scoring.

    metrics.json also records each split's caption spread (metrics.caption_spread) under "collapse",
    and the log says in words when one caption covers more than half of a split."""
    from .semantic import evaluate_all, options

    metrics, spread, about, seconds = {}, {}, {}, {}
    train_titles = training_titles(cfg, datasets)
    for split in ("valid", "test"):
        ds = datasets.get(split)
        if ds is None or len(ds) == 0:
            continue
        t0 = time.perf_counter()
        preds = generate_split(caption_fn, model, ds, cfg, cfg.preset, device, f"captioning {split}", collate_fn)
        seconds[split] = {"captioning": round(time.perf_counter() - t0, 3)}
        scores, about = on_main(evaluate_all, preds, [r.references for r in ds.records], ds.records, train_titles,
                                **options(cfg))
        metrics[split] = {**scores, "images": len(preds)}  # the count: a --limit run says so
        seconds[split].update(about["seconds"])
        spread[split] = caption_spread(preds)
        warning = collapse_warning(spread[split], f"{split} images")
        if warning and distributed.is_main():
            print(warning, file=sys.stderr)
        run.write_predictions(ds.records, preds, "predictions.csv" if split == "test" else "predictions_valid.csv")
    if not metrics:
        raise UserError("nothing to evaluate: the valid and test splits have no usable images.")
    run.write_json("metrics.json", {**metrics, "collapse": spread,
                                    "info": {"method": run.method, "preset": cfg.preset,
                                             "scorers": about.get("scorers", {}), "eval_seconds": seconds,
                                             **(info or {})}})
    return metrics


def print_metrics(method: str, metrics: dict) -> None:
    from .metrics import format_table

    print(format_table({f"{method} ({split})": m for split, m in metrics.items()}), end="")


# -------------------------------------------------------------------------------------- training
def _save_checkpoint(run: Run, model, optimizer, scheduler, state: dict) -> None:
    from safetensors.torch import save_file

    ck = run.dir / "checkpoint"
    ck.mkdir(exist_ok=True)
    name = f"epoch-{state['epochs_done']:04d}"
    tmp = ck / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weights = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
    save_file(weights, tmp / "trainable.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({**state, "scheduler": scheduler.state_dict()}))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    shutil.rmtree(ck / name, ignore_errors=True)
    os.replace(tmp, ck / name)
    atomic_write_text(ck / "latest.json", json.dumps({"dir": name}))  # the commit point
    for old in ck.glob("epoch-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(run: Run, model, optimizer, scheduler) -> dict | None:
    from safetensors.torch import load_file

    latest = run.dir / "checkpoint" / "latest.json"
    if not latest.exists():
        return None
    try:
        ck = run.dir / "checkpoint" / Path(json.loads(latest.read_text())["dir"]).name
        weights = load_file(ck / "trainable.safetensors")
        optimizer_state = torch.load(ck / "optimizer.pt", weights_only=True, map_location="cpu")
        state = json.loads((ck / "state.json").read_text())
    except load_errors() as e:  # weights_only=True refuses a pickle that holds more than tensors
        why = str(e).strip().splitlines()[0][:100] if str(e).strip() else type(e).__name__
        raise UserError(f"the checkpoint in {run.dir / 'checkpoint'} is damaged or not ours ({why}); "
                        "pass --overwrite to start the run again.") from None
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    if missing:
        raise UserError(f"checkpoint {ck} does not match this model/freeze setting ({missing[0]} missing).")
    with torch.no_grad():
        for n, t in weights.items():
            params[n].copy_(t)
    optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(state.pop("scheduler"))
    return state


def save_best(run: Run, recipe: Recipe, model) -> None:
    """Write best/ atomically: a new folder first, then swap it in."""
    tmp, best, old = run.dir / ".best.tmp", run.dir / "best", run.dir / ".best.old"
    shutil.rmtree(tmp, ignore_errors=True)
    recipe.save(model, tmp)
    shutil.rmtree(old, ignore_errors=True)
    if best.exists():
        os.replace(best, old)
    os.replace(tmp, best)
    shutil.rmtree(old, ignore_errors=True)


def fit(run: Run, cfg, recipe: Recipe, datasets: dict, accelerator) -> dict:
    """Train recipe.model on datasets["train"], validating on datasets["valid"]; returns the final state."""
    from accelerate.utils import broadcast_object_list

    model = recipe.model
    train = datasets["train"]
    if len(train) == 0:
        raise UserError("the train split has no usable images.")
    if cfg.batch_size % accelerator.num_processes:
        raise UserError(f"--batch-size {cfg.batch_size} must be divisible by the {accelerator.num_processes} processes.")
    sampler = EpochSampler(len(train), cfg.seed)
    workers = cfg.workers if len(train) > 4 * cfg.batch_size else 0
    # The loader's own generator: starting its worker processes draws a seed from it, not from the global
    # RNG, so a resumed epoch (whose workers start afresh) draws the same dropout masks as an
    # uninterrupted one (whose persistent workers started in epoch 1).
    loader = torch.utils.data.DataLoader(
        train, batch_size=cfg.batch_size, sampler=sampler, collate_fn=recipe.collate, drop_last=False,
        num_workers=workers, persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(cfg.seed))
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UserError("nothing to train: every parameter is frozen.")
    optimizer = make_adamw(params, cfg)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    steps_per_epoch = max(1, math.ceil(len(loader) / cfg.grad_accum))
    total = steps_per_epoch * cfg.epochs
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer,
        T_0=max(1, cfg.restart_epochs * steps_per_epoch), eta_min=cfg.lr * 0.01)
    unwrapped = accelerator.unwrap_model(model)
    state = {"epochs_done": 0, "step": 0, "best": None, "best_epoch": 0, "bad_evals": 0, "train_seconds": 0.0}
    if cfg.resume:
        loaded = _load_checkpoint(run, unwrapped, optimizer, scheduler)
        if loaded:
            state = loaded
            run.truncate_log(state["epochs_done"])
            if accelerator.is_main_process:
                print(f"resuming after epoch {state['epochs_done']} (best {cfg.monitor} {state['best']})")
        elif accelerator.is_main_process:
            print("no checkpoint found: starting from the beginning")
    if accelerator.is_main_process and run.is_main:
        tr = sum(p.numel() for p in params)
        print(f"training {tr:,} of {sum(p.numel() for p in unwrapped.parameters()):,} parameters "
              f"for {cfg.epochs} epochs ({steps_per_epoch} steps each) on {accelerator.device}")
    stop = state["bad_evals"] >= cfg.patience > 0
    for epoch in range(state["epochs_done"], cfg.epochs):
        if stop:
            break
        t0 = time.time()
        _set_seed(cfg.seed + epoch)
        sampler.epoch = epoch
        model.train()
        _frozen_children_to_eval(unwrapped)
        losses = []
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, unit="batch",
                   disable=not accelerator.is_main_process, mininterval=1)
        for i, batch in enumerate(bar):
            ts = TrainState(epoch, state["step"], total, (epoch + i / len(loader)) / cfg.epochs)
            with accelerator.accumulate(model), accelerator.autocast():  # autocast reaches submodules called directly
                loss = recipe.loss(model, batch, ts)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    if cfg.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if accelerator.sync_gradients:
                    scheduler.step()
                    state["step"] += 1
            losses.append(loss.detach().float().item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", refresh=False)
        train_loss = float(accelerator.reduce(torch.tensor(np.mean(losses), device=accelerator.device),
                                              reduction="mean").item())
        state["train_seconds"] += time.time() - t0
        row = {"epoch": epoch + 1, "train_loss": train_loss, "lr": scheduler.get_last_lr()[0],
               "seconds": round(time.time() - t0, 2)}
        last = epoch + 1 == cfg.epochs
        if (epoch + 1) % cfg.eval_every == 0 or last:
            flag = [None]
            preds = generate_split(recipe.caption, unwrapped, datasets["valid"], cfg, cfg.eval_preset,
                                   accelerator.device, "validating", recipe.collate)  # every process a share
            if accelerator.is_main_process:
                m = score(datasets["valid"], preds)
                row["valid"] = m
                spread = caption_spread(preds)
                row["collapse"] = {k: spread[k] for k in ("distinct_share", "top_share")}
                warning = collapse_warning(spread, "validation images")
                if warning:
                    print(warning, file=sys.stderr)
                value = m[cfg.monitor]
                if state["best"] is None or value > state["best"]:
                    state.update(best=value, best_epoch=epoch + 1, bad_evals=0)
                    save_best(run, recipe, unwrapped)
                else:
                    state["bad_evals"] += 1
                flag = [dict(state)]
            broadcast_object_list(flag)
            state = flag[0]
            stop = state["bad_evals"] >= cfg.patience > 0
        state["epochs_done"] = epoch + 1
        if accelerator.is_main_process:
            v = row.get("valid", {}).get(cfg.monitor)
            c = row.get("collapse")
            print(f"epoch {epoch + 1}: loss {train_loss:.4f}" + (f", valid {cfg.monitor} {v:.4f}" if v is not None
                                                                  else "")
                  + (f", {c['distinct_share']:.0%} distinct captions (top one {c['top_share']:.0%})" if c else "")
                  + (" (early stop)" if stop else ""))
            run.log(row)
            if getattr(cfg, "report_to", "none") != "none":
                accelerator.log({"train_loss": train_loss, **{f"valid/{k}": x for k, x in row.get("valid", {}).items()}},
                                step=epoch + 1)
            _save_checkpoint(run, unwrapped, optimizer, scheduler, state)
        accelerator.wait_for_everyone()
    if accelerator.is_main_process and not (run.dir / "best").exists():
        save_best(run, recipe, unwrapped)
    accelerator.wait_for_everyone()
    return state


def free_training_copy(accelerator, model) -> None:
    """Release the trained model's memory (weights, gradients, optimizer state) before best/ loads, so the
    final evaluation never holds two copies of a base LLM. `model` is left on the meta device: unusable."""
    import gc

    accelerator.free_memory()  # the prepared (wrapped) model and optimizer it holds
    model.to("meta")  # parameters keep their objects but lose their storage, wherever else they are referenced
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def train_and_evaluate(cfg, recipe: Recipe, datasets: dict, method: str) -> dict:
    """The whole life of a training run: folder, fit, best model on valid and test, metrics.json."""
    for split, why in (("train", "to train on"), ("valid", "to choose the best epoch")):
        if datasets.get(split) is None or len(datasets[split]) == 0:
            raise UserError(f"the {split} split has no usable images; training needs them {why}.")
    if cfg.max_new_tokens < cfg.max_length:
        print(f"note: --max-new-tokens {cfg.max_new_tokens} is below --max-length {cfg.max_length}: captions longer "
              f"than {cfg.max_new_tokens} tokens are cut in validation and test", file=sys.stderr)
    accelerator = make_accelerator(cfg, project_dir=cfg.output_dir)
    run = Run(cfg, method, is_main=accelerator.is_main_process, resume=cfg.resume)
    accelerator.wait_for_everyone()
    if getattr(cfg, "report_to", "none") != "none":
        accelerator.init_trackers(method, config={k: v for k, v in to_dict(cfg).items()
                                                  if isinstance(v, (int, float, str, bool))})
    state = fit(run, cfg, recipe, datasets, accelerator)
    free_training_copy(accelerator, recipe.model)
    best = recipe.load(run.dir / "best").to(accelerator.device)  # every process captions a share of each split
    metrics = evaluate_splits(run, cfg, recipe.caption, best, datasets, accelerator.device, recipe.collate,
                              info={"best_epoch": state["best_epoch"], "epochs_done": state["epochs_done"],
                                    "train_seconds": round(state["train_seconds"], 1),
                                    "monitor": cfg.monitor, "processes": accelerator.num_processes})
    if accelerator.is_main_process:
        print_metrics(method, metrics)
        write_card(run.dir)  # best/README.md: the model card, from the files just written
    accelerator.wait_for_everyone()
    for tracker in accelerator.trackers:  # not end_training(): the process group stays for what the script does next
        tracker.finish()
    return metrics
