"""captioning.models and the pixel cache: freezing, token hygiene, pixels equal to the processor's."""
import numpy as np
import pytest
import torch
from PIL import Image

from captioning.cache import pixel_cache
from captioning.config import UserError
from captioning.data import Record
from captioning.models import encode_targets, freeze, load_vit_gpt2, pixel_normalizer, processor_size


def six_layer_model(tokenizer):
    from transformers import GPT2Config, ViTConfig, VisionEncoderDecoderConfig, VisionEncoderDecoderModel

    enc = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64)
    dec = GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=32, n_layer=6, n_head=2,
                     add_cross_attention=True, is_decoder=True)
    return VisionEncoderDecoderModel(config=VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec))


def trainable(model, prefix):
    return {n for n, p in model.named_parameters() if p.requires_grad and n.startswith(prefix)}


def test_freeze_strategies(synth):
    _, _, tok = load_vit_gpt2(str(synth / "models" / "vit-gpt2"))
    m = six_layer_model(tok)
    freeze(m, "vit")
    assert not trainable(m, "encoder.") and trainable(m, "decoder.")
    freeze(m, "gpt2")
    assert trainable(m, "encoder.") and not trainable(m, "decoder.")
    freeze(m, "gpt2-last4")
    blocks = {int(n.split(".")[3]) for n in trainable(m, "decoder.transformer.h.")}
    assert blocks == {0, 1}  # the deepest four of six (2..5) are frozen
    assert trainable(m, "decoder.transformer.wte") and trainable(m, "encoder.")
    counts = freeze(m, "none")
    assert counts["trainable"] == counts["total"]
    with pytest.raises(UserError, match="unknown freeze strategy"):
        freeze(m, "all")


def test_eos_target_survives_when_pad_is_eos(synth):
    _, _, tok = load_vit_gpt2(str(synth / "models" / "vit-gpt2"))
    assert tok.pad_token_id == tok.eos_token_id
    labels, mask = encode_targets(tok, ["Two Lemons on a Plate", "A Bowl"], max_length=32)
    for row, m in zip(labels, mask):
        n = int(m.sum())
        assert row[n - 1] == tok.eos_token_id  # the last real target is EOS ...
        assert (row[n:] == -100).all()  # ... and only padding is ignored
    labels, _ = encode_targets(tok, ["word " * 100], max_length=8)
    assert labels.shape[1] == 8 and labels[0, -1] == tok.eos_token_id


def test_generation_config_has_the_ids(synth):
    model, _, tok = load_vit_gpt2(str(synth / "models" / "vit-gpt2"))
    g = model.generation_config
    assert g.eos_token_id == g.pad_token_id == g.decoder_start_token_id == tok.eos_token_id


def test_cached_pixels_equal_processor_output(synth, tmp_path):
    from skimage import data as skdata

    _, proc, _ = load_vit_gpt2(str(synth / "models" / "vit-gpt2"))
    paths = []
    for name in ("astronaut", "coffee", "chelsea"):
        p = tmp_path / f"{name}.jpg"
        Image.fromarray(getattr(skdata, name)()).save(p)
        paths.append(p)
    recs = [Record(p.stem, "t", p) for p in paths]
    size = processor_size(proc)
    arr, kept, skips = pixel_cache(recs, size, int(proc.resample), tmp_path / "c", workers=0)
    assert len(kept) == 3 and not skips
    ours = pixel_normalizer(proc)(torch.from_numpy(np.array(arr)))
    theirs = proc(images=[Image.open(p).convert("RGB") for p in paths], return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, atol=1e-5)
    # the second call reads the cache; touching an image invalidates it
    arr2, _, _ = pixel_cache(recs, size, int(proc.resample), tmp_path / "c", workers=0)
    assert np.array_equal(np.array(arr2), np.array(arr))
    Image.new("RGB", (10, 10), (255, 0, 0)).save(paths[0])
    arr3, _, _ = pixel_cache(recs, size, int(proc.resample), tmp_path / "c", workers=0)
    assert not np.array_equal(np.array(arr3[0]), np.array(arr[0]))


def test_pixel_cache_skips_bad_images(tmp_path):
    good = tmp_path / "g.jpg"
    Image.new("RGB", (30, 20), (0, 200, 0)).save(good)
    bad = tmp_path / "b.jpg"
    bad.write_bytes(b"not a picture")
    arr, kept, skips = pixel_cache([Record("g", "t", good), Record("b", "t", bad)], 16, 2, tmp_path / "c", workers=0)
    assert [r.image_name for r in kept] == ["g"] and arr.shape == (1, 3, 16, 16) and skips == {"not an image": 1}


@pytest.mark.parametrize("name,words", [("/nonexistent/model", "does not exist"), ("./typo-model", "does not exist")])
def test_bad_model_path(name, words):
    with pytest.raises(UserError, match=words):
        load_vit_gpt2(name)


def test_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(UserError, match="holds no model"):
        load_vit_gpt2(str(tmp_path))
