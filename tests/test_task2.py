"""task2: frozen ViT + projector + Llama with LoRA, on the tiny synthetic models."""
import importlib.util
import json
import shutil
import sys
import time

import numpy as np
import pytest
import torch

from conftest import ROOT, assert_clean_failure, run_cli

sys.path.insert(0, str(ROOT / "task2"))

from anymodal import AnyModalCaptioner  # noqa: E402
from llm import LORA_TARGETS, add_peft, get_llm  # noqa: E402
from vision import Projector, load_vision, pool_tokens  # noqa: E402

from captioning.cache import feature_cache  # noqa: E402
from captioning.config import UserError  # noqa: E402
from captioning.data import load_split  # noqa: E402

PROMPT = "The name of the dish in the image is: "
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # tiny ops: a second thread only adds contention on a busy CPU


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "task2" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def vit(synth):
    return load_vision(str(synth / "models" / "vit"))


@pytest.fixture(scope="module")
def features(synth, vit, tmp_path_factory):
    """Cached features of the train split: (array, records)."""
    records, _ = load_split(synth, "train")
    arr, kept, skipped = feature_cache(records, vit[1], vit[0], tmp_path_factory.mktemp("fc"), workers=0)
    assert sum(skipped.values()) == 1  # the truncated JPEG of the dirty entries: a counted skip
    return arr, kept


def new_captioner(synth, pool="none", seed=0):
    torch.manual_seed(seed)
    llm, tok = get_llm(str(synth / "models" / "llama"))
    llm = add_peft(llm, "r8")
    projector = Projector(64, llm.get_input_embeddings().embedding_dim, pool=pool)
    settings = {"llm": str(synth / "models" / "llama"), "projector": projector.settings, "prompt": PROMPT,
                "max_length": 32}
    return AnyModalCaptioner(llm, tok, projector, settings)


@pytest.fixture(scope="module")
def trained(synth, features):
    """A captioner overfitted on 8 images of distinct captions (a short training: 300 small steps)."""
    arr, kept = features
    picked, seen = [], set()
    for i, r in enumerate(kept):
        if r.title not in seen and not r.image_name.startswith("zz"):
            seen.add(r.title)
            picked.append(i)
        if len(picked) == 8:
            break
    feats = torch.from_numpy(np.array(arr[picked]))
    caps = [kept[i].title for i in picked]
    model = new_captioner(synth)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for _ in range(300):
        loss = model(feats, caps)
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    return model, feats, caps


# ------------------------------------------------------------------------------------ feature cache
def test_feature_cache_is_reused_and_never_stale(synth, vit, tmp_path):
    encoder, processor = vit
    records, _ = load_split(synth, "valid")
    records = [r for r in records if not r.image_name.startswith("zz")][:12]
    arr, kept, _ = feature_cache(records, processor, encoder, tmp_path, workers=0)
    assert isinstance(arr.base if arr.base is not None else arr, np.memmap) or isinstance(arr, np.memmap)
    assert arr.shape == (12, 65, 64) and arr.dtype == np.float16
    # the stored features are the encoder's output
    from captioning.cache import pixel_cache
    from captioning.models import pixel_normalizer

    pix, _, _ = pixel_cache(records[:2], 64, 2, tmp_path, workers=0)
    with torch.no_grad():
        values = pixel_normalizer(processor)(torch.from_numpy(np.array(pix)))
        direct = encoder(pixel_values=values).last_hidden_state
    assert torch.allclose(torch.from_numpy(np.array(arr[:2])).float(), direct, atol=2e-2)
    # a second call reads the file: the encoder is never run
    forward = encoder.forward
    encoder.forward = lambda *a, **k: (_ for _ in ()).throw(AssertionError("encoder ran on a cache hit"))
    try:
        again, _, _ = feature_cache(records, processor, encoder, tmp_path, workers=0)
    finally:
        encoder.forward = forward
    assert np.array_equal(np.asarray(again), np.asarray(arr))
    files = sorted(tmp_path.glob("features-*.npy"))
    # other weights (a retrained encoder) get other features, never the stale ones
    with torch.no_grad():
        encoder.embeddings.patch_embeddings.projection.bias.add_(0.5)
    try:
        changed, _, _ = feature_cache(records, processor, encoder, tmp_path, workers=0)
    finally:
        with torch.no_grad():
            encoder.embeddings.patch_embeddings.projection.bias.sub_(0.5)
    assert len(sorted(tmp_path.glob("features-*.npy"))) == len(files) + 1
    assert not np.allclose(np.asarray(changed), np.asarray(arr))
    # an edited image gets new features too
    time.sleep(0.01)
    records[0].path.touch()
    feature_cache(records, processor, encoder, tmp_path, workers=0)
    assert len(sorted(tmp_path.glob("features-*.npy"))) == len(files) + 2


def test_projector_pools_and_has_a_nonlinearity():
    x = torch.randn(2, 65, 64)
    assert pool_tokens(x, "none").shape == (2, 65, 64)
    assert pool_tokens(x, "cls").shape == (2, 1, 64)
    assert pool_tokens(x, "4x4").shape == (2, 16, 64)
    assert torch.allclose(pool_tokens(x, "mean")[:, 0], x[:, 1:].mean(1))
    p = Projector(64, 32, hidden=48, layers=2)
    assert any(isinstance(m, torch.nn.GELU) for m in p.modules())
    assert p(x).shape == (2, 65, 32)
    with pytest.raises(UserError):
        Projector(64, 32, pool="3x3")


# --------------------------------------------------------------------------------------- the model
def test_lora_settings_of_the_original(synth):
    llm, _ = get_llm(str(synth / "models" / "llama"))
    model = add_peft(llm, "r8")
    cfg = model.peft_config["default"]
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout) == (8, 32, 0.1)
    assert set(cfg.target_modules) == set(LORA_TARGETS)
    llm, _ = get_llm(str(synth / "models" / "llama"))
    assert add_peft(llm, "r4").peft_config["default"].lora_alpha == 16
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


def test_labels_cover_caption_and_eos_only(synth):
    model = new_captioner(synth).eval()
    model.pad_id = model.eos_id  # Llama 3 has no pad token: pad shares the EOS id
    caps = ["One Egg on a Red Plate", "A Blue Bowl of Four Limes"]
    ids, mask, labels = model.targets(caps, "cpu")
    for row, m, lab in zip(ids, mask, labels):
        n = int(m.sum())
        assert row[n - 1] == model.eos_id and lab[n - 1] == model.eos_id  # EOS is a target
        assert (lab[n:] == -100).all()  # padding is not
    # padding changes nothing: a batch of unequal prompts (left-padded prefix) and unequal captions
    # (right-padded) scores each row exactly as it scores alone
    feats, prompts = torch.randn(2, 65, 64), ["Dish:", PROMPT]
    n = mask.sum(1).float()
    with torch.no_grad():
        together = model(feats, caps, prompts)
        alone = [model(feats[i: i + 1], caps[i: i + 1], prompts[i: i + 1]) for i in range(2)]
    assert torch.allclose(together, (alone[0] * n[0] + alone[1] * n[1]) / n.sum(), atol=1e-4)


def test_loss_on_kept_logits_equals_the_llms_own_loss(synth):
    """forward computes logits only on the caption positions: the same loss the LLM gives with logits
    everywhere and -100 labels on the image, the prompt and the padding (gradients included)."""
    model = new_captioner(synth, seed=3).train()
    torch.manual_seed(3)
    feats, caps = torch.randn(3, 65, 64), ["One Egg on a Red Plate", "A Blue Bowl of Four Limes", "Two Limes"]
    prompts = ["Dish:", PROMPT, PROMPT]  # unequal prompts: a left-padded prefix
    torch.manual_seed(4)  # the same dropout masks in both passes
    kept = model(feats, caps, prompts)
    grad_kept = torch.autograd.grad(kept, model.projector.net[0].weight)[0]

    torch.manual_seed(4)
    embeds, mask = model.prefix(feats, prompts)
    ids, cap_mask, labels = model.targets(caps, "cpu")
    embeds = torch.cat([embeds, model.llm.get_input_embeddings()(ids)], 1)
    mask = torch.cat([mask, cap_mask], 1)
    labels = torch.cat([torch.full(mask[:, : -ids.shape[1]].shape, -100), labels], 1)
    full = model.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0),
                     labels=labels).loss
    grad_full = torch.autograd.grad(full, model.projector.net[0].weight)[0]
    assert torch.allclose(kept, full, atol=1e-5), (kept, full)
    assert torch.allclose(grad_kept, grad_full, atol=1e-6)


def test_the_image_matters(trained):
    model, feats, caps = trained
    with torch.no_grad():
        real = model(feats, caps).item()
        blind = model(torch.zeros_like(feats), caps).item()
    assert blind > real + 0.4, (real, blind)  # zeroing the image prefix changes (raises) the loss
    out = model.caption(feats, "greedy", 16)
    assert len(set(out)) >= 6, out  # different images, different captions
    assert sum(o == c for o, c in zip(out, caps)) >= 6, (out, caps)
    assert model.stats["ended_with_eos"] == model.stats["captions"]  # every caption stopped at EOS


def test_batched_generation_equals_one_at_a_time(trained):
    model, feats, _ = trained
    prompts = [PROMPT if i % 2 else "Dish:" for i in range(len(feats))]  # unequal lengths: left padding
    batched = model.generate(feats, "greedy", 12, prompts=prompts)
    for i in range(len(feats)):
        single = model.generate(feats[i: i + 1], "greedy", 12, prompts=prompts[i: i + 1])[0]
        n = len(single)
        assert batched[i, :n].tolist() == single.tolist(), i
        assert (batched[i, n:] == model.pad_id).all()


def test_save_and_load_round_trip(trained, tmp_path):
    model, feats, caps = trained
    model.save(tmp_path / "best")
    assert (tmp_path / "best" / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "best" / "projector.safetensors").is_file()
    assert not list((tmp_path / "best").rglob("*.bin")) and not list((tmp_path / "best").rglob("*.pt"))
    loaded = AnyModalCaptioner.load(tmp_path)  # the run folder (holding best/) works too
    with torch.no_grad():
        assert torch.allclose(loaded(feats, caps), model(feats, caps), atol=1e-5)
    assert loaded.caption(feats, "greedy", 16) == model.caption(feats, "greedy", 16)
    with pytest.raises(UserError, match="not a trained task2"):
        AnyModalCaptioner.load(tmp_path / "best" / "adapter")


def test_vision_model_from_a_task1_run(synth, tmp_path):
    from transformers import VisionEncoderDecoderModel

    ved = synth / "models" / "vit-gpt2"
    run = tmp_path / "task1run"
    shutil.copytree(ved, run / "best")
    encoder, processor = load_vision(str(run))  # the run folder: its best/ encoder
    reference = VisionEncoderDecoderModel.from_pretrained(ved).encoder
    assert type(encoder).__name__ == "ViTModel" and processor.size["height"] == 64
    for (name, a), b in zip(encoder.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name
    assert not any(p.requires_grad for p in encoder.parameters())


# ------------------------------------------------------------------------------------- the scripts
def test_train_and_inferllama_end_to_end(synth, tmp_path):
    models = synth / "models"
    out = tmp_path / "llama_lora"
    secret = "hf_tEsTsEcReT123456"
    proc = run_cli(ROOT / "task2" / "train.py", "--data-dir", synth, "--model", models / "llama",
                   "--vision-model", models / "vit", "--output-dir", out, "--epochs", "2",
                   "--batch-size", "16",
                   "--lr", "5e-3", "--workers", "0", "--preset", "greedy", "--max-new-tokens", "12",
                   "--pool", "4x4", "--cache-dir", tmp_path / "cache", "--hf-token", secret, env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("config.json", "log.jsonl", "metrics.json", "predictions.csv", "predictions_valid.csv",
                 "best/anymodal.json", "best/projector.safetensors", "best/adapter/adapter_model.safetensors",
                 "checkpoint/latest.json"):
        assert (out / name).exists(), name
    assert len((out / "log.jsonl").read_text().splitlines()) == 2
    assert "BLEU-4" in json.loads((out / "metrics.json").read_text())["test"]
    texts = [proc.stdout, proc.stderr] + [p.read_text() for p in out.rglob("*.json")]
    assert not any(secret in t for t in texts)

    infer = load_script("inferllama")  # as the demo loads it
    res = tmp_path / "inferllama"
    metrics = infer.main(["--run", str(out), "--data-dir", str(synth), "--output-dir", str(res),
                          "--preset", "greedy",
                          "--max-new-tokens", "12", "--cache-dir", str(tmp_path / "cache"), "--workers", "0"])
    info = json.loads((res / "metrics.json").read_text())["info"]
    assert set(metrics) == {"test"} and info["captions"] > 0
    trained = (out / "predictions.csv").read_text()
    assert (res / "predictions.csv").read_text() == trained  # the same captions from the saved run

    photos = tmp_path / "photos"
    photos.mkdir()
    for src in sorted((synth / "images").glob("dish-*.jpg"))[:3]:
        shutil.copy(src, photos)
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    infer.main(["--run", str(out), "--images", str(photos), "--output-dir", str(tmp_path / "photos_run"),
                "--preset", "greedy", "--max-new-tokens", "12", "--cache-dir", str(tmp_path / "cache")])
    lines = (tmp_path / "photos_run" / "predictions.csv").read_text().splitlines()
    assert len(lines) == 4 and "broken" not in "".join(lines)

    with pytest.raises(UserError, match="does not exist"):
        infer.main(["--run", str(tmp_path / "nope"), "--output-dir", str(tmp_path / "x")])


def test_bad_vision_model_exits_2(synth, tmp_path):
    proc = run_cli(ROOT / "task2" / "train.py", "--data-dir", synth, "--model", synth / "models" / "llama",
                   "--vision-model", tmp_path / "no-such-encoder", "--output-dir", tmp_path / "run",
                   env=ONE_THREAD)
    assert_clean_failure(proc, "does not exist")
    assert not (tmp_path / "run").exists()
    with pytest.raises(UserError, match="holds no model"):
        load_vision(str(synth / "images"))
    with pytest.raises(UserError, match="not an image encoder"):
        load_vision(str(synth / "models" / "llama"))


def test_a_damaged_trained_run_is_one_sentence(trained, tmp_path):
    model, _, _ = trained
    model.save(tmp_path / "best")
    (tmp_path / "best" / "projector.safetensors").write_bytes(b"\x00" * 32)
    with pytest.raises(UserError, match="incomplete or damaged"):
        AnyModalCaptioner.load(tmp_path)
    (tmp_path / "best" / "anymodal.json").write_text("{not json")
    with pytest.raises(UserError, match="damaged"):
        AnyModalCaptioner.load(tmp_path)
