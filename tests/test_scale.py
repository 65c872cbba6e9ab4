"""Scale-out findings, one test each, in one process: what goes wrong only on a GPU box or with a big
dataset, made visible on a tiny model (the 2-process checks are in test_multiprocess.py)."""
import json
import sys
import time
import tracemalloc
import types

import numpy as np
import pytest
import torch
from PIL import Image

from captioning import cache, distributed, engine
from captioning.config import TrainConfig, UserError, parse_config
from captioning.data import Record, load_split
from test_reliability import FT, call, entry

TRAINERS = ("task1/vit_gpt2_finetuned.py", "task1/vit_gpt2_attention.py", "task1/vit_gpt2_teacherF.py",
            "task1/vit_gpt2_finetuned_nuclear.py", "task1/vit_gpt2_finetuned_RL.py", "task1/blip.py", "task2/train.py",
            "task2/vlm_lora.py")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models gain nothing from a second thread


def tiny_vit_gpt2(synth):
    from captioning.models import freeze, load_vit_gpt2

    model, processor, tokenizer = load_vit_gpt2(str(synth / "models" / "vit-gpt2"))
    freeze(model, "none")
    return model, processor, tokenizer


def records(synth, split="train", n=16):
    recs, _ = load_split(synth, split)
    return [r for r in recs if not r.image_name.startswith("zz")][:n]


# ---------------------------------------------------------- 3, 8: the engine's loss and final evaluation
def test_loss_runs_in_autocast_and_best_loads_after_the_training_copy_is_freed(synth, tmp_path):
    """Finding 8: a loss that calls a submodule directly (sampling.encode runs the ViT) must run in the
    run's autocast, not only the wrapped model's forward. Finding 3: when best/ loads for the final
    evaluation, the training copy's weights are gone (two copies of a base LLM otherwise)."""
    from captioning.cache import pixel_datasets
    from captioning.models import vit_gpt2_recipe
    from captioning.sampling import encode

    model, processor, tokenizer = tiny_vit_gpt2(synth)
    cfg = TrainConfig(model=str(synth / "models" / "vit-gpt2"), data_dir=str(synth), output_dir=str(tmp_path / "r"),
                      epochs=1, batch_size=4, limit=4, workers=0, preset="greedy", max_new_tokens=2,
                      mixed_precision="bf16", patience=0)
    datasets = pixel_datasets(cfg, processor)
    recipe = vit_gpt2_recipe(model, processor, tokenizer, cfg)
    seen = {}
    xent = recipe.loss

    def loss(m, batch, state):
        device = batch["pixels"].device.type
        seen["autocast"] = torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device)
        encode(m, recipe.pixel_values(batch))  # the ViT, called directly (scheduled sampling, SCST)
        return xent(m, batch, state)

    def load(folder):
        seen["training copy at load"] = {p.device.type for p in model.parameters()}
        return real_load(folder)

    real_load, recipe.loss, recipe.load = recipe.load, loss, load
    from accelerate import Accelerator

    Accelerator(mixed_precision="no", cpu=True)  # an earlier run in this process chose another precision
    engine.train_and_evaluate(cfg, recipe, datasets, "autocast check")
    assert seen["autocast"] == torch.bfloat16
    assert seen["training copy at load"] == {"meta"}
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["test"]["BLEU-1"] >= 0


# ------------------------------------------------------------------------ 4: memory flat in dataset size
def test_caches_hold_a_bounded_number_of_decoded_images(synth, tmp_path):
    """Finding 4: the pixel cache kept every decoded image in a list and then in an array of the same size;
    the feature cache's decode pool ran ahead of a slow encoder without limit. Python-side memory while
    building either cache must stay far below the size of all decoded images."""
    from captioning.models import load_vit_gpt2

    recs = records(synth, "train", 120) * 4  # 480 decodes
    one = 3 * 64 * 64  # bytes of one decoded 64 px image
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        arr, kept, _ = cache.pixel_cache(recs, 64, 2, tmp_path / "p", workers=0)
        pixel_peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert len(kept) == len(recs) and arr.shape == (len(recs), 3, 64, 64)
    assert pixel_peak < 0.25 * len(recs) * one, (pixel_peak, len(recs) * one)

    model, processor, _ = load_vit_gpt2(str(synth / "models" / "vit-gpt2"))

    class Slow(torch.nn.Module):  # an encoder much slower than two decoding workers
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values):
            time.sleep(0.01)
            return self.inner(pixel_values=pixel_values)

    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        feats, kept, _ = cache.feature_cache(recs, processor, Slow(model.encoder), tmp_path / "f", workers=2,
                                             batch_size=4)
        feature_peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert len(kept) == len(recs)
    assert feature_peak < 0.25 * len(recs) * one, (feature_peak, len(recs) * one)


# --------------------------------------------------------------------------- 5: the feature-cache key
def test_encoder_key_ignores_the_pooler(synth):
    """Finding 5: the pooler never reaches last_hidden_state, and checkpoints without it initialise it at
    random on each load: it must not change the cache key (a new multi-GB file every run)."""
    model, _, _ = tiny_vit_gpt2(synth)
    encoder = model.encoder
    assert encoder.pooler is not None
    before = cache.encoder_fingerprint(encoder)
    with torch.no_grad():
        encoder.pooler.dense.weight.normal_()
    assert cache.encoder_fingerprint(encoder) == before
    with torch.no_grad():
        encoder.embeddings.patch_embeddings.projection.weight.add_(1e-3)
    assert cache.encoder_fingerprint(encoder) != before


# ---------------------------------------------------------------------- 6: SCST's gradient and samples
def test_scst_gradient_pass_runs_with_dropout_off_and_samples_follow_their_seed(synth):
    """Finding 6: SCST samples with dropout off, so the log-probabilities that carry its gradient must be
    computed with dropout off too (the policy that sampled). And an image's samples depend on its seed
    only, not on the other images of its batch (several processes then sample what one would)."""
    from transformers.modeling_outputs import BaseModelOutput

    from captioning.scst import scst_step

    model, _, tokenizer = tiny_vit_gpt2(synth)
    model.config.decoder.resid_pdrop = 0.5
    model.train()
    modes = []
    for m in model.decoder.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.5
            m.register_forward_hook(lambda mod, i, o: modes.append((torch.is_grad_enabled(), mod.training)))
    torch.manual_seed(0)
    hidden = torch.randn(3, 65, 64)
    refs = [["one egg"], ["two limes"], ["a bowl"]]

    def reward(caps, rs):
        return np.array([float(len(c)) for c in caps])

    out = scst_step(model, BaseModelOutput(last_hidden_state=hidden), refs, tokenizer, reward, k=3,
                    max_new_tokens=6, seeds=[(1, 0, i) for i in range(3)])
    assert out.loss.requires_grad
    with_grad = [training for grad, training in modes if grad]
    assert with_grad and not any(with_grad), "the log-probability pass ran with dropout on"
    assert model.training and model.decoder.training  # every module's mode is restored

    alone = scst_step(model, BaseModelOutput(last_hidden_state=hidden[1:2]), refs[1:2], tokenizer, reward, k=3,
                      max_new_tokens=6, seeds=[(1, 0, 1)])
    assert alone.samples[0] == out.samples[1]


# ---------------------------------------------------------------------------- 7: captions cut at test time
@pytest.mark.parametrize("script", TRAINERS)
def test_generation_is_long_enough_for_every_trained_title(script):
    """Finding 7: titles train up to --max-length tokens (EOS included), so by default generation must
    allow at least that many new tokens."""
    cfg = parse_config(entry(script).__globals__["Config"], [])
    assert cfg.max_new_tokens >= cfg.max_length, (script, cfg.max_new_tokens, cfg.max_length)


# ------------------------------------------------------------------------------ 9: processor geometry
def test_pixel_cache_follows_a_resize_then_crop_processor(tmp_path):
    """Finding 9: a CLIP/SigLIP-style processor resizes the shorter side and then centre-crops; the pixel
    cache (normalised on the device) must give the processor's own pixel_values, not a squashed square."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from captioning.imaging import pixel_normalizer, processor_size

    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    rng = np.random.default_rng(0)
    ims = []
    for i, (w, h) in enumerate([(80, 48), (40, 96)]):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        ims.append(Image.open(path).convert("RGB"))
    recs = [Record(f"{i}", "t", tmp_path / f"{i}.png") for i in range(2)]
    arr, kept, _ = cache.pixel_cache(recs, processor_size(processor), int(processor.resample), tmp_path / "c",
                                     workers=0, crop=cache.processor_crop(processor))
    ours = pixel_normalizer(processor)(torch.from_numpy(np.array(arr)))
    theirs = processor(images=ims, return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape == (2, 3, 32, 32)
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


# ------------------------------------------------------------------------------------ 10: METEOR
def test_empty_caption_is_scored_as_pycocoevalcap_scores_it():
    """Finding 10: corpus METEOR with an empty caption equals pycocoevalcap's own compute_score."""
    from captioning.metrics import evaluate_captions, get_meteor, tokenize

    preds, refs = ["grilled chicken salad", ""], [["grilled chicken with salad"], ["chocolate cake"]]
    gts, res = tokenize(preds, refs)
    assert res[1] == [""]
    expected = get_meteor().compute_score(gts, res)[0]
    assert evaluate_captions(preds, refs)["METEOR"] == pytest.approx(expected, abs=1e-9)


# --------------------------------------------------------------------------- 11: deepseek_vl package
def test_deepseek_vl_package_loads_without_a_second_copy_in_memory(monkeypatch, tmp_path):
    """Finding 11: the original package's 7B model loads with low_cpu_mem_usage (not twice the model in
    CPU memory), placed where it runs."""
    from captioning import vlm

    calls = {}

    class Fake:
        @classmethod
        def from_pretrained(cls, name, **kwargs):
            calls[cls.__name__] = kwargs
            return cls()

        def eval(self):
            return self

    fake = types.ModuleType("deepseek_vl.models")
    fake.MultiModalityCausalLM = type("MultiModalityCausalLM", (Fake,), {})
    fake.VLChatProcessor = type("VLChatProcessor", (Fake,), {})
    monkeypatch.setitem(sys.modules, "deepseek_vl", types.ModuleType("deepseek_vl"))
    monkeypatch.setitem(sys.modules, "deepseek_vl.models", fake)
    (tmp_path / "m").mkdir()
    vlm.load_deepseek_vl_package(str(tmp_path / "m"))
    assert calls["MultiModalityCausalLM"].get("low_cpu_mem_usage") is True


# ----------------------------------------------------------------------- 12: resume with DataLoader workers
def test_resume_is_exact_with_dataloader_workers(synth, tmp_path, capsys, monkeypatch):
    """Finding 12: with DataLoader workers (every real run), a run stopped after its first checkpoint and
    resumed logs the same epoch losses as an uninterrupted one."""
    args = ["--model", synth / "models" / "vit-gpt2", "--data-dir", synth, "--epochs", "2", "--batch-size", "8",
            "--lr", "2e-3", "--workers", "2", "--preset", "greedy", "--max-new-tokens", "2", "--patience", "0",
            "--eval-every", "2", "--limit", "40", "--seed", "3"]
    code, _, err = call(capsys, FT, *args, "--output-dir", tmp_path / "a")
    assert code == 0, err[-3000:]
    real_save = engine._save_checkpoint

    def killed_after_first(run, *a, **k):  # the process dies right after the first checkpoint is committed
        real_save(run, *a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "_save_checkpoint", killed_after_first)
    code, _, _ = call(capsys, FT, *args, "--output-dir", tmp_path / "b")
    assert code == 130
    monkeypatch.setattr(engine, "_save_checkpoint", real_save)
    code, out, err = call(capsys, FT, *args, "--output-dir", tmp_path / "b", "--resume")
    assert code == 0 and "resuming after epoch 1" in out, err[-3000:]
    la, lb = ([json.loads(x)["train_loss"] for x in (tmp_path / d / "log.jsonl").read_text().splitlines()]
              for d in "ab")
    assert la == lb


# ----------------------------------------------------------------------- 13: trackers log into the run
def test_tensorboard_logs_into_the_run_folder(synth, tmp_path, capsys, monkeypatch):
    """Finding 13: --report-to tensorboard wrote into a folder named `None` in the working directory."""
    pytest.importorskip("tensorboard")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    code, _, err = call(capsys, FT, "--model", synth / "models" / "vit-gpt2", "--data-dir", synth, "--output-dir",
                        out, "--epochs", "1", "--batch-size", "8", "--workers", "0", "--preset", "greedy",
                        "--max-new-tokens", "4", "--limit", "8", "--report-to", "tensorboard")
    assert code == 0, err[-3000:]
    assert not (tmp_path / "None").exists()
    events = list(out.rglob("events.out.tfevents.*"))
    assert events, sorted(p.name for p in out.iterdir())


# ------------------------------------------------------------------------ 2: the collective timeout
def test_process_timeout_is_an_option():
    """Finding 2 (timeout): how long a process waits for the others is a flag, handed to the process group."""
    cfg = parse_config(TrainConfig, ["--process-timeout", "90"])
    assert distributed.init_kwargs(cfg)["timeout"].total_seconds() == 90 * 60
    with pytest.raises(UserError):
        parse_config(TrainConfig, ["--process-timeout", "0"])
