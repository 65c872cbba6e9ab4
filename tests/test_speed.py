"""What the speed-ups rest on computes the same numbers as the slow way (timings live in bench/, not here).

- A frozen ViT's cached features train the decoder exactly as running the encoder on every batch.
- task1 --freeze vit trains from the feature cache end to end.
- The benchmark's re-creation of the original (image processor per item) feeds the model the same
  pixels as our pixel cache + on-device normalisation, so both sides of a ratio do the same work.
- bench/run.py's report: targets judged the right way round, a benchmark that fails is named.
"""
import copy
import json
import os
import subprocess
import sys

import pytest
import torch

from captioning.cache import feature_datasets, pixel_datasets
from captioning.config import TrainConfig
from captioning.data import collate
from captioning.models import freeze, load_vit_gpt2, pixel_normalizer, vit_gpt2_recipe
from conftest import ROOT, run_cli

sys.path.insert(0, str(ROOT / "bench"))


def config(synth, tmp_path, limit=24):
    return TrainConfig(model=str(synth / "models" / "vit-gpt2"), data_dir=str(synth), output_dir=str(tmp_path / "run"),
                       limit=limit, workers=0, cache_dir=str(tmp_path / "cache"), max_length=16, max_new_tokens=6)


def train_losses(model, recipe, dataset, steps=4, batch=8):
    """Losses of a few AdamW steps the way the engine runs them (frozen encoder in eval mode)."""
    torch.manual_seed(0)  # the same dropout masks on both sides
    model.train()
    model.encoder.eval()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    losses = []
    for i in range(steps):
        b = collate([dataset[j] for j in range(i * batch, (i + 1) * batch)])
        loss = recipe.xent(model, b)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def test_cached_features_train_like_the_frozen_encoder(synth, tmp_path):
    cfg = config(synth, tmp_path, limit=32)
    model, processor, tokenizer = load_vit_gpt2(cfg.model)
    freeze(model, "vit")
    pixels = pixel_datasets(cfg, processor, ("train",))["train"]
    exact = feature_datasets(cfg, processor, model.encoder, ("train",), dtype="float32")["train"]
    stored = pixel_datasets(cfg, processor, ("train",), encoder=model.encoder)["train"]  # what task1 uses
    assert [r.image_name for r in exact.records] == [r.image_name for r in pixels.records]
    assert "features" in stored[0] and "pixels" not in stored[0]
    reference = train_losses(copy.deepcopy(model), vit_gpt2_recipe(model, processor, tokenizer, cfg), pixels)
    for dataset, tol in ((exact, 1e-5), (stored, 2e-3)):  # float32 features; the default float16 store
        m = copy.deepcopy(model)
        got = train_losses(m, vit_gpt2_recipe(m, processor, tokenizer, cfg), dataset)
        assert got == pytest.approx(reference, rel=tol), (got, reference)
    assert reference[-1] < reference[0]  # the steps did train
    # captioning from features matches captioning from pixels
    recipe = vit_gpt2_recipe(model, processor, tokenizer, cfg)
    model.eval()
    from_pixels = recipe.caption(model, collate([pixels[i] for i in range(6)]), "beam")
    from_features = recipe.caption(model, collate([exact[i] for i in range(6)]), "beam")
    assert from_features == from_pixels


def test_shared_encoder_outputs_from_features_equal_an_encoder_pass(synth, tmp_path):
    """What scheduled sampling and SCST share between their passes (recipe.encoded) is the same from
    the feature cache of a frozen ViT as from running it on the pixels."""
    cfg = config(synth, tmp_path, limit=8)
    model, processor, tokenizer = load_vit_gpt2(cfg.model)
    freeze(model, "vit")
    model.eval()
    recipe = vit_gpt2_recipe(model, processor, tokenizer, cfg)
    pixels = pixel_datasets(cfg, processor, ("train",))["train"]
    feats = feature_datasets(cfg, processor, model.encoder, ("train",), dtype="float32")["train"]
    from_pixels = recipe.encoded(model, collate([pixels[i] for i in range(8)])).last_hidden_state
    from_cache = recipe.encoded(model, collate([feats[i] for i in range(8)])).last_hidden_state
    assert from_cache.shape == from_pixels.shape
    assert torch.allclose(from_cache, from_pixels, atol=1e-5)


def test_finetune_freeze_vit_uses_the_feature_cache(synth, tmp_path):
    out, cache = tmp_path / "ft", tmp_path / "cache"
    p = run_cli("task1/vit_gpt2_finetuned.py", "--model", synth / "models" / "vit-gpt2", "--data-dir", synth,
                "--output-dir", out, "--epochs", "2", "--batch-size", "8", "--lr", "2e-3", "--freeze", "vit",
                "--workers", "0", "--preset", "beam", "--max-new-tokens", "6", "--limit", "32", "--cache-dir", cache)
    assert p.returncode == 0, p.stderr[-3000:]
    assert list(cache.glob("features-*.npy")), "no feature cache was written"
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and log[1]["train_loss"] < log[0]["train_loss"]
    m = json.loads((out / "metrics.json").read_text())
    assert set(m) >= {"valid", "test"}
    assert (out / "best" / "model.safetensors").exists()


def test_baseline_sees_the_same_pixels_as_the_cache(synth, tmp_path):
    from original import PerItemDataset

    cfg = config(synth, tmp_path, limit=6)
    _, processor, _ = load_vit_gpt2(cfg.model)
    cached = pixel_datasets(cfg, processor, ("train",))["train"]
    norm = pixel_normalizer(processor)
    per_item = PerItemDataset(cached.records, processor)
    for i in range(len(cached)):
        ours = norm(cached[i]["pixels"][None])[0]
        theirs = per_item[i]["pixel_values"]
        assert theirs.shape == ours.shape
        assert torch.allclose(ours, theirs, atol=1e-5), float((ours - theirs).abs().max())


def test_anymodal_baseline_computes_our_task2_loss(synth):
    """bench_task2's original side (AnyModal's per-sample assembly, logits everywhere) trains the same
    loss, with the same gradients, as our batched captioner: its ratio times one computation two ways."""
    sys.path.insert(0, str(ROOT / "task2"))
    from anymodal import AnyModalCaptioner
    from original import anymodal_loss
    from llm import add_peft, get_llm
    from vision import Projector

    torch.manual_seed(0)
    llm, tok = get_llm(str(synth / "models" / "llama"))
    projector = Projector(64, llm.get_input_embeddings().embedding_dim)
    model = AnyModalCaptioner(add_peft(llm, "r8"), tok, projector, {"prompt": "The dish is: ", "max_length": 32})
    model.eval()  # no dropout: both sides see the same network
    feats = torch.randn(3, 65, 64)
    caps = ["One Egg on a Red Plate", "A Blue Bowl of Four Limes", "Two Limes"]  # unequal lengths: padding
    ours, theirs = model(feats, caps), anymodal_loss(model, feats, caps)
    weight = projector.net[0].weight
    assert torch.allclose(ours, theirs, atol=1e-5), (ours, theirs)
    assert torch.allclose(torch.autograd.grad(ours, weight)[0], torch.autograd.grad(theirs, weight)[0], atol=1e-6)


def fake_result(**figures):
    import run as bench_run

    base = {k: None for k in bench_run.HEADLINE}
    base.update(figures)
    return {"figures": base, "details": {}, "errors": {"task2": "ImportError: no module"}, "seconds": {},
            "info": {"date": "d", "machine": {"cpu": "cpu", "cores": 2, "torch": "t"}, "load_before": (1, 1, 1),
                     "load_after": (1, 1, 1), "total_seconds": 60}}


def test_report_judges_targets_and_names_failures(tmp_path):
    import run as bench_run

    result = fake_result(finetune_epoch_speedup=2.5, frozen_epoch_speedup=2.9, reward_share=0.04, ocr_speedup=1.8,
                         utilisation=0.2)
    bench_run.write(result, tmp_path)
    data = json.loads((tmp_path / "results.json").read_text())
    for key in ("finetune_epoch_speedup", "frozen_epoch_speedup", "task2_epoch_speedup", "eval_speedup",
                "reward_share", "ocr_speedup", "utilisation"):
        assert key in data
    assert data["task2_epoch_speedup"] is None and "task2" in data["errors"]
    assert bench_run.met("finetune_epoch_speedup", 2.5) == "yes"
    assert bench_run.met("frozen_epoch_speedup", 2.9) == "NO"
    assert bench_run.met("reward_share", 0.04) == "yes" and bench_run.met("reward_share", 0.12) == "NO"
    assert bench_run.met("eval_speedup", None) == "not measured"
    md = (tmp_path / "RESULTS.md").read_text()
    assert "| 2.50x |" in md and "not measured (ImportError" in md


def test_report_keeps_the_hand_pasted_sections_of_results(tmp_path):
    import run as bench_run

    (tmp_path / "RESULTS.md").write_text("# old table\n| 1.00x |\n\n## Real-scale check\n| llama-3b | 13.1 GiB |\n")
    bench_run.write(fake_result(finetune_epoch_speedup=2.5), tmp_path)
    md = (tmp_path / "RESULTS.md").read_text()
    assert "old table" not in md and "| 2.50x |" in md
    assert md.endswith("\n## Real-scale check\n| llama-3b | 13.1 GiB |\n") and md.count("## Real-scale") == 1


def test_bench_refuses_unknown_benchmark(tmp_path):
    from conftest import assert_clean_failure

    p = run_cli("bench/run.py", "--only", "train,gpu", "--out", tmp_path)
    assert_clean_failure(p, "unknown benchmark")
    assert not (tmp_path / "results.json").exists()


def test_gpu_script_runs_its_steps_and_needs_no_gpu():
    import os
    import subprocess

    script = ROOT / "bench" / "gpu.sh"
    env = {**os.environ, "PYTHON": sys.executable}

    def gpu_sh(*args):
        return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=180, cwd=ROOT,
                              env=env)

    if not torch.cuda.is_available():  # without CUDA it says so and stops cleanly
        p = gpu_sh()
        assert p.returncode == 2, (p.stdout, p.stderr)
        assert "no CUDA GPU" in p.stderr and "Traceback" not in p.stderr
    p = gpu_sh("--tiny-on-cpu")  # the same code path on a tiny model
    assert p.returncode == 0, p.stderr[-3000:]
    for line in ("training step:", "step FLOPs:", "utilisation:", "greedy captioning:"):
        assert line in p.stdout, p.stdout


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_a_quick_bench_may_take_an_argument_named_quick(tmp_path, monkeypatch):
    """bench_semantic.run takes `quick`: run.py's helper passed it twice and the full bench lost that row."""
    import run as bench_run

    (tmp_path / "fake_bench.py").write_text("def run(quick=False, n=1):\n    return {'quick': quick, 'n': n}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert bench_run._call("fake_bench", True, quick=True, n=3, other=5) == {"quick": True, "n": 3}
    assert bench_run._call("fake_bench", False, quick=True, n=3) == {"quick": False, "n": 1}


def _projection_rows(model) -> list[int]:
    """Watch the decoder's cross-attention key/value projections: the rows each call projects."""
    rows = []
    for block in model.decoder.transformer.h:
        block.crossattention.c_attn.register_forward_hook(lambda mod, args, out: rows.append(args[0].shape[0] *
                                                                                           args[0].shape[1]))
    return rows


@pytest.mark.parametrize("widths", [(32, 32), (48, 32)], ids=["same-width", "projected"])
def test_beam_search_shares_each_images_cross_attention(widths, tmp_path):
    """A beam search projects each image's cross-attention keys/values once, not once per beam, and attends
    every beam to that one copy; beam search reorders only the self-attention cache. Titles and scores
    equal transformers' own beam search (which repeats the encoder output per beam); training afterwards
    computes the same loss, and a saved config does not record the attention it switched to."""
    from transformers import GPT2Config, ViTConfig, VisionEncoderDecoderConfig, VisionEncoderDecoderModel

    from captioning.generation import (SHARED_BEAMS, _beam_cache_class, encoder_decoder_generate, generation_kwargs,
                                       top_k_kwargs)

    torch.manual_seed(0)
    enc = ViTConfig(image_size=32, patch_size=8, hidden_size=widths[0], num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64)
    dec = GPT2Config(vocab_size=40, n_positions=32, n_embd=widths[1], n_layer=2, n_head=2, add_cross_attention=True,
                     bos_token_id=0, eos_token_id=1, pad_token_id=1, decoder_start_token_id=0)
    model = VisionEncoderDecoderModel(VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)).eval()
    model.config.decoder_start_token_id, model.config.pad_token_id = 0, 1
    model.generation_config.update(decoder_start_token_id=0, pad_token_id=1, eos_token_id=1)
    pixels = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(2, 40, (5, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(labels)
    mask[:2, 4:] = 0
    with torch.no_grad():
        loss_before = model(pixel_values=pixels, labels=labels, decoder_attention_mask=mask).loss
    assert model.decoder.config._attn_implementation == "sdpa"

    cls, reorders = _beam_cache_class(), []
    real = cls.reorder_cache

    def watched(self, beam_idx):
        cross = [layer.keys for layer in self.cross_attention_cache.layers]
        real(self, beam_idx)
        reorders.append(all(a is b for a, b in zip(cross, [layer.keys for layer in self.cross_attention_cache.layers])))

    rows = _projection_rows(model)
    cls.reorder_cache = watched
    try:
        with torch.no_grad():
            for kwargs, beams in ((generation_kwargs("beam", 12), 4), ({**top_k_kwargs(3), "max_new_tokens": 12}, 3)):
                rows.clear()
                ours = encoder_decoder_generate(model, kwargs, pixel_values=pixels)
                assert rows == [5 * 17] * 2  # per layer, one projection of 5 images x 17 tokens (16 patches + CLS)
                assert model.decoder.config._attn_implementation == SHARED_BEAMS
                plain = model.generate(pixel_values=pixels, **kwargs)  # transformers' own: every beam projected
                assert rows[2:] == [5 * beams * 17] * 2
                if isinstance(plain, torch.Tensor):
                    assert torch.equal(plain, ours)
                else:
                    assert torch.equal(plain.sequences, ours.sequences)
                    assert torch.allclose(plain.sequences_scores, ours.sequences_scores, atol=1e-5)
    finally:
        cls.reorder_cache = real
    assert reorders and all(reorders)
    with torch.no_grad():
        assert torch.equal(model(pixel_values=pixels, labels=labels, decoder_attention_mask=mask).loss, loss_before)
    model.save_pretrained(tmp_path / "saved")
    assert SHARED_BEAMS not in (tmp_path / "saved" / "config.json").read_text()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_keep_freed_memory_reuses_big_blocks_instead_of_faulting_in_fresh_pages():
    """A 64 MB block freed and allocated again costs 16,384 page faults every time under glibc's defaults (it
    is mapped and unmapped); after keep_freed_memory it is reused (load_captioner sets it: batched captioning
    allocates tens of MB per token)."""
    code = ("import resource, sys, torch\n"
            "from captioning.config import keep_freed_memory\n"
            "if sys.argv[1] == 'on':\n"
            "    assert keep_freed_memory()\n"
            "for _ in range(3):\n"
            "    torch.ones(16 << 20)\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "for _ in range(40):\n"
            "    torch.ones(16 << 20)\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n")
    faults = {}
    for mode in ("off", "on"):
        out = subprocess.run([sys.executable, "-c", code, mode], cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
        assert out.returncode == 0, out.stderr
        faults[mode] = int(out.stdout.split()[-1])
    # off: every block mapped afresh; on: reused (the heap still grows now and then: small blocks settle in
    # the freed space, the next big one no longer fits there)
    assert faults["off"] >= 40 * 16_000 and faults["on"] <= faults["off"] / 4, faults
