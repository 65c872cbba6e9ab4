"""Real-scale check on the CPU: each default model's real architecture, random weights, through its recipe.

    python bench/realscale.py                          # every case, under 15 minutes on 2 cores (3B: ~10 GiB)
    python bench/realscale.py --only vit-gpt2,llama-1b # some cases; --list shows them
    python bench/realscale.py --quick                  # shrunken models: checks the plumbing in a minute

Each case builds the checkpoint's architecture at full size (full depth, full vocabulary) with random
weights, and a tokenizer that follows the real checkpoint's special-token conventions:
    GPT-2      50,257 ids, bos = eos = 50256 (<|endoftext|>), no pad token
    Llama 3    128,256 ids, <|begin_of_text|> 128000 added in front, <|end_of_text|> 128001, no pad token
    DeepSeek   the chat model's 102,400 ids plus <image_placeholder>, a chat template
saves it as a model folder, and runs the recipe script itself (its main(), in a fresh process, so the
peak memory is that case's alone, and only one model is in memory at a time) for a few steps on a
few synthetic images at the recipe's real image size: the shapes, the token conventions (the
tokenizer the script ends with, the ids generation stops on), save and load (best/ written and loaded
back for the final evaluation), and peak RSS. Large LLMs are stored and loaded in bf16
(--llm-dtype bfloat16), as a user with little memory would.

Writes runs/bench/realscale.json and prints a markdown table (bench/RESULTS.md holds the committed one).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "task2")]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "PYTHONPATH": str(ROOT)}
IMAGES = 6  # training images per case (valid and test: 2 each)

# name -> (script, what it builds, recipe arguments)
CASES = {
    "vit-gpt2": ("task1/vit_gpt2_finetuned.py", "vit-gpt2", ["--freeze", "none"]),
    "vit-gpt2-frozen": ("task1/vit_gpt2_finetuned.py", "vit-gpt2", ["--freeze", "vit"]),
    "vit-gpt2-scst": ("task1/vit_gpt2_finetuned_RL.py", "vit-gpt2", ["--samples", "2"]),
    "llama-1b": ("task2/train.py", "llama-1b", ["--llm-dtype", "bfloat16"]),
    "llama-3b": ("task2/train.py", "llama-3b", ["--llm-dtype", "bfloat16"]),
    "blip-base": ("task1/blip.py", "blip-base", ["--lora", "r16"]),
    "deepseek-vl-1.3b": ("task2/deepseek.py", "deepseek-vl-1.3b", ["--dtype", "bfloat16"]),
}


# ----------------------------------------------------------------------------------- tokenizers
def _bpe(size: int, specials: list[str]):
    """A byte-level BPE with exactly `size` ordinary ids (a small vocabulary trained on titles, the rest
    ids no text maps to), then `specials` at ids size, size + 1, ..."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from captioning import synthetic

    trained = json.loads(synthetic.train_tokenizer(TEXTS, vocab_size=600).backend_tokenizer.to_str())["model"]
    tokens = [t for t, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]) if t != synthetic.SPECIAL]
    vocab = {t: i for i, t in enumerate(tokens)}
    vocab.update({f"<unused_{i}>": i for i in range(len(vocab), size)})
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    return tok


def gpt2_tokenizer(quick: bool = False):
    from transformers import GPT2TokenizerFast

    eot = "<|endoftext|>"
    tok = GPT2TokenizerFast(tokenizer_object=_bpe(1000 if quick else 50256, [eot]), bos_token=eot, eos_token=eot,
                            unk_token=eot)
    assert tok.pad_token is None and tok.eos_token_id == tok.bos_token_id == len(tok) - 1
    return tok


def llama3_tokenizer(quick: bool = False):
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    bos, eos = "<|begin_of_text|>", "<|end_of_text|>"
    specials = [bos, eos] + [f"<|reserved_special_token_{i}|>" for i in range(254)]
    backend = _bpe(1000 if quick else 128000, specials)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, backend.token_to_id(bos))])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos)
    assert tok.pad_token is None and len(tok) == (1256 if quick else 128256)
    return tok


TEXTS = []  # filled by build(): every synthetic title and the task2 prompt


# --------------------------------------------------------------------------------------- models
def build(kind: str, out: Path, quick: bool) -> dict:
    """Write a model folder of `kind` into `out`; returns what was built (parameters, ids)."""
    import torch
    from transformers import (GPT2Config, LlamaConfig, LlamaForCausalLM, ViTConfig, ViTImageProcessorPil,
                              ViTModel, VisionEncoderDecoderConfig, VisionEncoderDecoderModel)

    torch.manual_seed(0)
    if kind == "vit-gpt2":  # nlpconnect/vit-gpt2-image-captioning: ViT-B/16 224 px + GPT-2 124M, cross-attention
        tok = gpt2_tokenizer(quick)
        enc = ViTConfig(num_hidden_layers=1, hidden_size=64, intermediate_size=128, num_attention_heads=2) \
            if quick else ViTConfig()
        dec = GPT2Config(vocab_size=len(tok), n_layer=1 if quick else 12, n_embd=64 if quick else 768,
                         n_head=2 if quick else 12, add_cross_attention=True, is_decoder=True,
                         bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
        cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
        cfg.decoder_start_token_id = cfg.eos_token_id = cfg.bos_token_id = tok.eos_token_id
        cfg.pad_token_id = tok.eos_token_id  # as the hub checkpoint's config
        model = VisionEncoderDecoderModel(config=cfg)
        model.generation_config.decoder_start_token_id = tok.eos_token_id
        model.generation_config.eos_token_id = model.generation_config.bos_token_id = tok.eos_token_id
        model.save_pretrained(out)
        tok.save_pretrained(out)
        ViTImageProcessorPil(size={"height": 224, "width": 224}, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                             resample=2).save_pretrained(out)
        return {"parameters": model.num_parameters(), "vocabulary": len(tok), "eos": tok.eos_token_id}
    if kind == "vit":  # google/vit-base-patch16-224-in21k (task2's frozen encoder)
        cfg = ViTConfig(num_hidden_layers=1, hidden_size=64, intermediate_size=128, num_attention_heads=2) \
            if quick else ViTConfig()
        model = ViTModel(cfg)
        model.save_pretrained(out)
        ViTImageProcessorPil(size={"height": 224, "width": 224}, image_mean=[0.5] * 3,
                             image_std=[0.5] * 3).save_pretrained(out)
        return {"parameters": model.num_parameters()}
    if kind in ("llama-1b", "llama-3b"):  # meta-llama/Llama-3.2-1B and -3B configurations
        tok = llama3_tokenizer(quick)
        width, layers, heads, mlp = {"llama-1b": (2048, 16, 32, 8192), "llama-3b": (3072, 28, 24, 8192)}[kind]
        if quick:
            width, layers, heads, mlp = 64, 2, 4, 128
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=width, intermediate_size=mlp, num_hidden_layers=layers,
                          num_attention_heads=heads, num_key_value_heads=8 if not quick else 2,
                          head_dim=width // heads, max_position_embeddings=131072, rope_theta=500000.0,
                          rope_scaling={"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                        "original_max_position_embeddings": 8192, "rope_type": "llama3"},
                          tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          torch_dtype="bfloat16")
        torch.set_default_dtype(torch.bfloat16)  # built in bf16: one 3B copy is 6.4 GB, not 12.8
        try:
            model = LlamaForCausalLM(cfg)
        finally:
            torch.set_default_dtype(torch.float32)
        model.generation_config.bos_token_id, model.generation_config.eos_token_id = tok.bos_token_id, tok.eos_token_id
        model.save_pretrained(out)
        tok.save_pretrained(out)
        return {"parameters": model.num_parameters(), "vocabulary": len(tok), "eos": tok.eos_token_id}
    if kind == "deepseek-vl-1.3b":
        return build_deepseek(out, quick)
    if kind == "blip-base":
        return build_blip(out, quick)
    raise ValueError(kind)


def bert_tokenizer(quick: bool = False):
    """BLIP's tokenizer conventions (Salesforce/blip-image-captioning-base): BERT's WordPiece ids ([PAD] 0,
    [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103, 30,522 ids) + [DEC] 30522 (captions start from it) and
    [ENC] 30523: 30,524 ids; [CLS] text [SEP]."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    wp = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wp.normalizer, wp.pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    wp.train_from_iterator(TEXTS, trainers.WordPieceTrainer(vocab_size=400, special_tokens=["[UNK]"]))
    size = 1000 if quick else 30522
    fixed = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}
    free = (i for i in range(size) if i not in fixed.values())
    vocab = dict(fixed)
    for t in sorted(wp.get_vocab(), key=wp.get_vocab().get):
        if t not in vocab:
            vocab[t] = next(free)
    vocab.update({f"[unused{i}]": i for i in free})
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = wp.normalizer, wp.pre_tokenizer, decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", 101), ("[SEP]", 102)])
    tok.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]"])
    fast = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                             cls_token="[CLS]", mask_token="[MASK]", bos_token="[DEC]")
    assert fast.bos_token_id == size and len(fast) == size + 2
    return fast


def build_blip(out: Path, quick: bool) -> dict:
    """Salesforce/blip-image-captioning-base: ViT-B/16 at 384 px + a 12-layer BERT-base text decoder with
    cross-attention, vocabulary 30,524, bos = [DEC], eos = sep = [SEP], pad = [PAD]."""
    import torch
    from transformers import (BlipConfig, BlipForConditionalGeneration, BlipImageProcessorPil, BlipProcessor,
                              BlipTextConfig, BlipVisionConfig)

    tok = bert_tokenizer(quick)
    ids = dict(bos_token_id=tok.bos_token_id, sep_token_id=tok.sep_token_id, eos_token_id=tok.sep_token_id,
               pad_token_id=tok.pad_token_id)
    image = 32 if quick else 384
    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2) if quick else {}
    text = BlipTextConfig(vocab_size=len(tok), encoder_hidden_size=64 if quick else 768, **small, **ids)
    vision = BlipVisionConfig(image_size=image, patch_size=8 if quick else 16, initializer_range=0.02, **small)
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(BlipConfig(text_config=text.to_dict(), vision_config=vision.to_dict()))
    for key, value in ids.items():
        setattr(model.generation_config, key, value)
    model.save_pretrained(out)
    BlipProcessor(BlipImageProcessorPil(size={"height": image, "width": image}), tok).save_pretrained(out)
    return {"parameters": model.num_parameters(), "vocabulary": len(tok), "bos": tok.bos_token_id,
            "eos": tok.sep_token_id}


def build_deepseek(out: Path, quick: bool) -> dict:
    """deepseek-community/deepseek-vl-1.3b-chat: SigLIP-L/16 at 384 px (576 image tokens) + a 24-layer
    2048-wide LLM with a 102,400-id vocabulary, its processor with the image placeholder and a chat template."""
    import torch
    from transformers import (DeepseekVLConfig, DeepseekVLForConditionalGeneration, DeepseekVLImageProcessorPil,
                              DeepseekVLProcessor, LlamaConfig, SiglipVisionConfig)

    from captioning.synthetic import TINY_CHAT_TEMPLATE

    backend = _bpe(1000 if quick else 100000, ["<|begin▁of▁sentence|>", "<|end▁of▁sentence|>",
                                                 "<image_placeholder>"])
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|begin▁of▁sentence|>",
                                  eos_token="<|end▁of▁sentence|>", pad_token="<|end▁of▁sentence|>",
                                  padding_side="left", extra_special_tokens={"image_token": "<image_placeholder>"},
                                  chat_template=TINY_CHAT_TEMPLATE)
    image, patch = (32, 8) if quick else (384, 16)
    vocab = len(tok) if quick else 102400
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    text = LlamaConfig(vocab_size=vocab, hidden_size=64 if quick else 2048, intermediate_size=128 if quick else 5632,
                       num_hidden_layers=2 if quick else 24, num_attention_heads=2 if quick else 16,
                       num_key_value_heads=2 if quick else 16, max_position_embeddings=16384, **ids)
    vision = SiglipVisionConfig(image_size=image, patch_size=patch, hidden_size=32 if quick else 1024,
                                intermediate_size=64 if quick else 4096, num_hidden_layers=1 if quick else 24,
                                num_attention_heads=2 if quick else 16)
    cfg = DeepseekVLConfig(text_config=text, vision_config=vision,
                           image_token_id=tok.convert_tokens_to_ids("<image_placeholder>"))
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = DeepseekVLForConditionalGeneration(cfg)
    finally:
        torch.set_default_dtype(torch.float32)
    for key, value in ids.items():
        setattr(model.generation_config, key, value)
    model.save_pretrained(out)
    DeepseekVLProcessor(DeepseekVLImageProcessorPil(size={"height": image, "width": image}), tok,
                        chat_template=TINY_CHAT_TEMPLATE,
                        num_image_tokens=(image // patch) ** 2).save_pretrained(out)
    return {"parameters": model.num_parameters(), "vocabulary": vocab, "image_tokens": (image // patch) ** 2}


# ------------------------------------------------------------------------------------------ run
def run_case(name: str, work: Path, quick: bool, gpu: bool = False) -> dict:
    """In a fresh process: the recipe's main() on the built model; what it shows. gpu=True: the recipe's
    default batch and precision (4 steps), for bench/gpu.sh's measured figures."""
    script, kind, extra = CASES[name]
    data, models = work / "data", work / "models"
    out = work / "runs" / name
    common = ["--data-dir", data, "--output-dir", out, "--cache-dir", work / "cache", "--workers", "0",
              "--preset", "greedy", "--max-new-tokens", "4", "--overwrite"]
    if script.startswith("task1/vit_gpt2_finetuned") or script == "task1/blip.py":
        args = ["--model", models / kind, "--epochs", "1", "--batch-size", "2", "--patience", "0", "--limit",
                str(IMAGES)]
    elif script == "task2/train.py":  # one step at batch 2: a step of the 3B model takes a minute on 2 cores
        args = ["--model", models / kind, "--vision-model", models / "vit", "--epochs", "1", "--batch-size", "2",
                "--patience", "0", "--limit", "2", "--pool", "none", "--lr", "1e-4"]
    else:
        args = ["--model", models / kind, "--batch-size", "2", "--limit", "2"]
    if gpu:  # the default batch, 4 steps, the default precision (fp32 weights, bf16 autocast)
        batch = DEFAULT_BATCH[name]
        args[args.index("--batch-size") + 1] = str(batch)
        args[args.index("--limit") + 1] = str(4 * batch)
        extra = [x for x in extra if x not in ("--llm-dtype", "bfloat16", "--dtype")]
    argv = [str(a) for a in [*args, *extra, *common]]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--case", script, *argv]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - t0
    if p.returncode:
        return {"case": name, "ok": False, "error": (p.stderr or p.stdout)[-1500:], "seconds": seconds}
    found = json.loads(p.stdout.strip().splitlines()[-1])
    return {"case": name, "ok": True, "seconds": round(seconds, 1), **found}


def case_main(script: str, argv: list[str]) -> None:
    """The child process: run the recipe, then report peak RSS, steps and what the run folder holds."""
    import importlib.util

    import torch

    from captioning.config import run_main

    import threading

    from torch.utils.flop_counter import FlopCounterMode

    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    seen = {"rss_start_gib": round(rss() / 2 ** 30, 3)}  # after the imports, before the recipe
    whole, stop = [0], threading.Event()  # this process's own peak (ru_maxrss would include the parent's
    #                                       pages it shared before exec)

    def watch_all():
        while not stop.wait(0.02):
            whole[0] = max(whole[0], rss())

    threading.Thread(target=watch_all, daemon=True).start()
    from captioning import engine

    real_fit, real_save_best = engine.fit, engine.save_best

    def fit(run, cfg, recipe, datasets, accelerator):  # what trains, its memory, FLOPs and time
        model, loss = recipe.model, recipe.loss
        seen["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        seen["total"] = sum(p.numel() for p in model.parameters())
        seen["train_images"], seen["batch"] = len(datasets["train"]), cfg.batch_size

        def counted(m, batch, state):  # the forward FLOPs of the first batch, per image
            if "forward_gflop_per_image" in seen:
                return loss(m, batch, state)
            with FlopCounterMode(display=False) as counter:
                out = loss(m, batch, state)
            seen["forward_gflop_per_image"] = counter.get_total_flops() / len(batch["caption"]) / 1e9
            return out

        recipe.loss = counted
        start, peak, done = rss(), [0], threading.Event()

        def watch():
            while not done.wait(0.02):
                peak[0] = max(peak[0], rss())

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        try:
            state = real_fit(run, cfg, recipe, datasets, accelerator)
        finally:
            done.set()
            watcher.join()
        seen["rss_at_fit_start_gib"] = round(start / 2 ** 30, 3)
        seen["rss_peak_in_fit_gib"] = round(max(peak[0], rss()) / 2 ** 30, 3)
        if torch.cuda.is_available():
            seen["gpu_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
        seen["train_seconds"] = round(state["train_seconds"], 1)
        seen["steps"] = state["step"]
        return state

    def save_best(run, recipe, model):
        real_save_best(run, recipe, model)
        seen["best_files"] = sorted(p.name for p in (run.dir / "best").iterdir())

    engine.fit, engine.save_best = fit, save_best
    spec = importlib.util.spec_from_file_location("recipe", ROOT / script)
    module = importlib.util.module_from_spec(spec)
    sys.modules["recipe"] = module
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    sys_stdout = sys.stdout
    sys.stdout = sys.stderr  # the recipe's own output goes to stderr; stdout carries the JSON line
    try:
        run_main(module.main, argv)
    finally:
        sys.stdout = sys_stdout
    out = Path(argv[argv.index("--output-dir") + 1])
    metrics = json.loads((out / "metrics.json").read_text())
    for cfg_file in sorted((out / "best").rglob("tokenizer_config.json"))[:1]:  # what best/ carries
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(cfg_file.parent)
        seen["saved_tokenizer"] = {"ids": len(tok), "bos": tok.bos_token_id, "eos": tok.eos_token_id,
                                   "pad": tok.pad_token_id}
    preds = (out / "predictions.csv").read_text().splitlines()
    seen.update(seconds_in_recipe=round(time.perf_counter() - t0, 1),
                peak_rss_gib=round(max(whole[0], rss()) / 2 ** 30, 2),
                test_images=metrics["test"].get("images", len(preds) - 1), predictions=len(preds) - 1,
                cache_files=len(list(Path(argv[argv.index("--cache-dir") + 1]).glob("*.npy"))))
    print(json.dumps(seen))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--case"]:
        return case_main(argv[1], argv[2:])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default="", help="comma-separated cases (default: all)")
    p.add_argument("--list", action="store_true")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--gpu", action="store_true", help="on a CUDA GPU: default batches, measured memory and step time")
    a = p.parse_args(argv)
    if a.list:
        print("\n".join(CASES))
        return
    names = [n for n in (a.only.split(",") if a.only else CASES) if n]
    from captioning import synthetic

    TEXTS.extend(synthetic.caption_for(f, c, k, col) for f in range(len(synthetic.FOODS)) for c in range(1, 5)
                 for k in ("plate", "bowl") for col in synthetic.CONTAINER_COLOURS)
    TEXTS.append("The name of the dish in the image is:")
    results, t_all = [], time.perf_counter()
    with tempfile.TemporaryDirectory(dir=os.environ.get("REALSCALE_TMP")) as d:
        work = Path(d)
        synthetic.make_dataset(work / "data", n=200 if a.gpu else IMAGES * 2, seed=4, dirty=False)
        built = {}
        for name in names:
            kind = CASES[name][1]
            needs = [kind] + (["vit"] if CASES[name][0] == "task2/train.py" else [])
            for k in needs:
                if k not in built:
                    t = time.perf_counter()
                    built[k] = {**build(k, work / "models" / k, a.quick), "build_seconds": 0.0}
                    built[k]["build_seconds"] = round(time.perf_counter() - t, 1)
                    print(f"built {k}: {built[k]}", flush=True)
            r = run_case(name, work, a.quick, a.gpu)
            r["model"] = built[kind]
            results.append(r)
            print(json.dumps(r), flush=True)
            for k in list(built):  # one big model on disk at a time
                if k.startswith(("llama", "deepseek", "blip")):
                    import shutil

                    shutil.rmtree(work / "models" / k, ignore_errors=True)
    total = time.perf_counter() - t_all
    out = ROOT / "runs" / "bench" / "realscale.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cases": results, "seconds": round(total, 1), "quick": a.quick,
                               "load": os.getloadavg()}, indent=2))
    print(table(results))
    print(f"total {total / 60:.1f} minutes; written to {out}")


KAGGLE_TRAIN = 10_800  # images in the Kaggle training split (80% of 13,500), as bench/gpu.sh
DEFAULT_BATCH = {"vit-gpt2": 32, "vit-gpt2-frozen": 32, "vit-gpt2-scst": 32, "llama-1b": 16, "llama-3b": 16,
                 "blip-base": 16, "deepseek-vl-1.3b": 8}
GPU_BF16_FLOPS, UTILISATION = 312e12, 0.4  # an A100's dense bf16 rate, and the share a training step reaches


def hardware(r: dict) -> dict:
    """A recipe's figures at real size on a GPU in bf16 at its default batch, derived from the CPU run:
    parameters trained (counted); memory = weights (fp32, 4 B per parameter; deepseek bf16, 2 B) +
    gradients (4 B per trained parameter) + AdamW state (8 B) + autocast's bf16 copies of trained
    weights (2 B) + activations (the CPU run's peak RSS during training less the libraries, weights,
    gradients and AdamW state, per image, times the default batch, halved for bf16 when the CPU run was
    in fp32: an upper bound); epoch time = forward FLOPs per image
    counted on the CPU x 3 (forward + backward) x 10,800 images / (312 TFLOP/s x 40%)."""
    gib = 2 ** 30
    batch = DEFAULT_BATCH[r["case"]]
    if "trainable" not in r:  # zero-shot: bf16 weights + what the CPU run added per image
        weights = 2 * r["model"]["parameters"]
        act = max(0.0, r["peak_rss_gib"] * gib - r["rss_start_gib"] * gib - weights) / 2 * batch
        return {"trained": 0, "memory_gib": (weights + act) / gib, "epoch_min": None, "batch": batch}
    trained, total = r["trainable"], r["total"]
    state = 4 * trained + 8 * trained
    bf16_on_cpu = "bfloat16" in CASES[r["case"]][2]  # these CPU runs held bf16 weights: activations already bf16
    # The CPU run's peak during training less what is not activations: the interpreter and libraries (RSS
    # before the recipe, or at the start of training if lower), the weights (loaded lazily from the file,
    # so they become resident during training) and gradients + AdamW state. An upper bound: the peak also
    # holds allocator slack.
    base = min(r["rss_start_gib"], r["rss_at_fit_start_gib"]) * gib
    grew = max(0.0, r["rss_peak_in_fit_gib"] * gib - base - total * (2 if bf16_on_cpu else 4) - state)
    samples = 5 / 2 if r["case"].endswith("scst") else 1  # SCST: 5 samples per image by default, 2 here
    act = grew / r["batch"] * batch * samples / (1 if bf16_on_cpu else 2)
    memory = 4 * total + state + 2 * trained + act
    epoch = r.get("forward_gflop_per_image", 0) * 1e9 * 3 * KAGGLE_TRAIN / (GPU_BF16_FLOPS * UTILISATION) / 60
    return {"trained": trained, "memory_gib": memory / gib, "epoch_min": epoch, "batch": batch}


def table(results) -> str:
    rows = ["| case | parameters | trained | train images | training pass | peak RSS | checks |",
            "|---|---:|---:|---:|---:|---:|---|"]
    for r in results:
        if not r["ok"]:
            rows.append(f"| {r['case']} | {r['model'].get('parameters', 0) / 1e6:,.0f}M | | | | | FAILED |")
            continue
        checks = (f"best/ written and reloaded, {r['predictions']} test captions" if "trainable" in r
                  else f"zero-shot, {r['predictions']} test captions")
        rows.append(f"| {r['case']} | {r['model']['parameters'] / 1e6:,.0f}M | {r.get('trainable', 0) / 1e6:,.2f}M | "
                    f"{r.get('train_images', '-')} | {r.get('train_seconds', '-')} s | {r['peak_rss_gib']:.1f} GiB | "
                    f"{checks} |")
    rows += ["", "Derived for a GPU in bf16 at the default batch (see hardware()):", "",
             "| case | batch | parameters trained | peak memory | epoch of 10,800 images |", "|---|---:|---:|---:|---:|"]
    for r in results:
        if r["ok"]:
            h = hardware(r)
            epoch = f"{h['epoch_min']:.1f} min" if h["epoch_min"] else "-"
            rows.append(f"| {r['case']} | {h['batch']} | {h['trained'] / 1e6:,.2f}M | {h['memory_gib']:.1f} GiB | {epoch} |")
    measured = [r for r in results if r["ok"] and "gpu_peak_gib" in r]
    if measured:
        rows += ["", "Measured on this GPU at the default batch:", "",
                 "| case | batch | peak GPU memory | step | epoch of 10,800 images |", "|---|---:|---:|---:|---:|"]
        for r in measured:
            step = r["train_seconds"] / max(1, r["steps"])
            rows.append(f"| {r['case']} | {r['batch']} | {r['gpu_peak_gib']:.1f} GiB | {step:.2f} s | "
                        f"{step * -(-KAGGLE_TRAIN // r['batch']) / 60:.1f} min |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
