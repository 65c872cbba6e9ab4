"""The task1 method recipes: scheduled sampling, SCST pieces, and each script end to end."""
import importlib.util
import json

import numpy as np
import pytest
import torch

from captioning.config import UserError
from captioning.metrics import ALL_KEYS, METRIC_KEYS
from captioning.models import encode_targets, load_vit_gpt2, vit_gpt2_recipe
from captioning.sampling import SCHEDULES, encode, nucleus_pick, ramp, scheduled_sampling_loss
from captioning.scst import first_eos_mask, leave_one_out_mean, scst_loss, scst_step, sequence_logprobs
from conftest import ROOT, assert_clean_failure, run_cli

CAPTIONS = ["Two Lemons on a Blue Plate", "A White Bowl of Three Olives", "One Egg on a Black Plate",
            "Four Cookies on a Red Plate"]


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.fixture(scope="module")
def tiny(synth):
    torch.manual_seed(0)
    model, processor, tokenizer = load_vit_gpt2(str(synth / "models" / "vit-gpt2"))
    model.eval()  # no dropout: passes are comparable
    pixels = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    return model, processor, tokenizer, {"pixels": pixels, "caption": CAPTIONS}


def test_schedules_run_from_start_to_end():
    for s in SCHEDULES:
        assert ramp(0.0, s, 1.0, 0.5) == pytest.approx(1.0)
        assert ramp(1.0, s, 1.0, 0.5) == pytest.approx(1.0 if s == "constant" else 0.5)
        values = [ramp(p / 10, s, 1.0, 0.5) for p in range(11)]
        assert values == sorted(values, reverse=True)  # monotonic
    assert ramp(0.5, "quadratic", 0.0, 1.0) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        ramp(0.5, "cubic", 0, 1)


def test_scheduled_sampling_at_ratio_one_is_teacher_forcing(tiny):
    model, processor, tokenizer, batch = tiny
    labels, mask = encode_targets(tokenizer, batch["caption"])
    cfg = type("C", (), {"max_length": 32, "max_new_tokens": 8})
    recipe = vit_gpt2_recipe(model, processor, tokenizer, cfg, decoder_mask=True)
    with torch.no_grad():
        enc = encode(model, recipe.pixel_values(batch))
        plain = recipe.xent(model, batch)
        ss = scheduled_sampling_loss(model, enc, labels, mask, 1.0)
        torch.manual_seed(1)
        own = scheduled_sampling_loss(model, enc, labels, mask, 0.0)  # every input is the model's argmax
        torch.manual_seed(1)
        sampled = scheduled_sampling_loss(model, enc, labels, mask, 0.0, nucleus_pick(0.9, 0.8))
    assert ss.item() == pytest.approx(plain.item(), rel=1e-6)
    assert abs(own.item() - plain.item()) > 1e-4  # the mixture really changes what the decoder reads
    assert abs(sampled.item() - own.item()) > 1e-6


def test_log_probabilities_stop_at_the_first_eos(tiny):
    model, _, tokenizer, _ = tiny
    eos = tokenizer.eos_token_id
    tokens = torch.tensor([[5, eos, eos, 7], [5, 6, 7, 8]])
    assert first_eos_mask(tokens, eos).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    enc = encode(model, torch.zeros(1, 3, 64, 64))
    start = model.config.decoder_start_token_id
    a = torch.tensor([[start, 5, eos, 9, 9]])
    b = torch.tensor([[start, 5, eos, 11, 3]])  # differs only after EOS
    with torch.no_grad():
        assert sequence_logprobs(model, enc, a, eos).item() == pytest.approx(
            sequence_logprobs(model, enc, b, eos).item())
    rewards = np.array([1.0, 2.0, 3.0, 10.0, 10.0, 10.0])
    assert leave_one_out_mean(rewards, 3).tolist() == [2.5, 2.0, 1.5, 10, 10, 10]


def test_scst_step_makes_a_better_than_baseline_sample_more_likely(tiny):
    model, processor, tokenizer, batch = tiny
    start, eos = model.config.decoder_start_token_id, tokenizer.eos_token_id
    enc = encode(model, torch.zeros(2, 3, 64, 64), grad=False)
    ids = tokenizer(["Two Lemons"], add_special_tokens=False)["input_ids"][0]
    seqs = torch.tensor([[start, *ids, eos], [start, *ids, eos]])
    opt = torch.optim.SGD(model.decoder.parameters(), lr=0.05)
    before = sequence_logprobs(model, enc, seqs, eos).detach()
    # sample 0 beat its baseline, sample 1 fell short of it
    scst_loss(sequence_logprobs(model, enc, seqs[:1], eos), [2.0], [1.0]).backward()
    opt.step()
    opt.zero_grad()
    up = sequence_logprobs(model, enc, seqs, eos).detach()
    scst_loss(sequence_logprobs(model, enc, seqs[:1], eos), [0.0], [1.0]).backward()
    opt.step()
    opt.zero_grad()
    down = sequence_logprobs(model, enc, seqs, eos).detach()
    assert up[0] > before[0] + 1e-4 and down[0] < up[0] - 1e-4

    # the whole step: a reward that likes one word pushes the sampled captions towards it
    def reward(caps, refs):
        return np.array([float("lemon" in c.lower()) for c in caps])

    model.train()
    out = scst_step(model, encode(model, torch.zeros(2, 3, 64, 64)), [["x"], ["y"]], tokenizer, reward, k=4,
                    baseline="mean", max_new_tokens=6)
    model.eval()
    assert out.loss.requires_grad and np.isfinite(out.loss.item())
    assert len(out.samples) == 2 and all(len(s) == 4 for s in out.samples)
    # the step reports the reward of its own samples; the leave-one-out baselines average to the same
    assert out.reward == pytest.approx(np.mean([float("lemon" in s.lower()) for g in out.samples for s in g]))
    assert out.baseline == pytest.approx(out.reward)


def _load(script):
    path = ROOT / "task1" / f"{script}.py"
    spec = importlib.util.spec_from_file_location(script, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_run(folder):
    metrics = json.loads((folder / "metrics.json").read_text())
    for split in ("valid", "test"):
        assert all(np.isfinite(metrics[split][k]) for k in METRIC_KEYS) and set(metrics[split]) == {*ALL_KEYS, "images"}
    assert (folder / "predictions.csv").read_text().startswith("Image_Name,reference,prediction")
    assert (folder / "best" / "config.json").exists() and (folder / "log.jsonl").exists()
    return metrics


def test_every_script_runs_end_to_end(synth, tmp_path):
    cache = tmp_path / "cache"
    common = ["--data-dir", str(synth), "--limit", "16", "--epochs", "1", "--batch-size", "8",
              "--workers", "0", "--max-new-tokens", "8", "--preset", "greedy", "--lr", "1e-3",
              "--cache-dir", str(cache)]
    tiny = str(synth / "models" / "vit-gpt2")
    for script in ("vit_gpt2_attention", "vit_gpt2_teacherF", "vit_gpt2_finetuned_nuclear"):
        out = tmp_path / script
        teacher = script.endswith("teacherF")
        extra = ["--teacher-forcing-ratio", "0.5", "--final-ratio", "0.2"] if teacher else []
        extra += ["--freeze", "vit"] if script.endswith("nuclear") else []  # a frozen ViT: cached features
        _load(script).main(["--model", tiny, "--output-dir", str(out), *common, *extra])
        assert json.loads((out / "config.json").read_text())["method"].startswith(script)
        _check_run(out)
    assert len(list(cache.glob("features-*.npy"))) == 3  # nuclear's splits; the others read pixels
    rl = tmp_path / "rl"
    # SCST starts from the best/ folder of a fine-tuning run; its ViT, frozen by default, is read from
    # the feature cache (the fine-tuned encoder's own entries)
    best = str(tmp_path / "vit_gpt2_attention" / "best")
    _load("vit_gpt2_finetuned_RL").main(["--model", best, "--output-dir", str(rl), "--samples", "2",
                                         "--reward", "mix", *common])
    assert "SCST mix" in json.loads((rl / "metrics.json").read_text())["info"]["method"]
    assert len(list(cache.glob("features-*.npy"))) == 6
    _check_run(rl)
    with pytest.raises(UserError, match="between 0 and 1"):
        _load("vit_gpt2_teacherF").main(["--model", tiny, "--output-dir", str(tmp_path / "x"),
                                         "--teacher-forcing-ratio", "1.5", *common])


def test_scst_without_a_fine_tuned_model_fails_cleanly(synth, tmp_path):
    proc = run_cli(ROOT / "task1" / "vit_gpt2_finetuned_RL.py", "--model", tmp_path / "runs" / "ft" / "best",
                   "--data-dir", synth, "--output-dir", tmp_path / "rl")
    assert_clean_failure(proc, "fine-tuned model", "does not exist")
