"""Chat-VLM LoRA fine-tuning (captioning.vlm_lora, task2/vlm_lora.py) on three families (DeepSeek-VL hybrid, LLaVA,
SmolVLM): labels, cached vision outputs give the tower's loss, a trained adapter changes the captions,
save/load/caption gives the same titles, batched == one at a time."""
import pytest
import torch

from captioning.captioner import load_captioner
from captioning.data import load_image, load_split
from captioning.vlm import conversation, load_chat_vlm
from captioning.vlm_lora import (ChatLoRA, add_lora, answer_ids, base_model, chat_collate, chat_datasets,
                                 end_of_turn_ids, encode_images, training_batch)

QUESTION = "Title:"


@pytest.fixture(scope="module")
def chat_models(synth, tmp_path_factory):
    from transformers import AutoTokenizer

    from captioning.synthetic import build_tiny_llava, build_tiny_smolvlm

    tok = AutoTokenizer.from_pretrained(synth / "models" / "tokenizer")
    llava, smolvlm = tmp_path_factory.mktemp("llava"), tmp_path_factory.mktemp("smolvlm")
    build_tiny_llava(llava, tok)
    build_tiny_smolvlm(smolvlm, tok)
    return {"deepseek-vl-hybrid": synth / "models" / "deepseek-vl", "llava": llava, "smolvlm": smolvlm}


FAMILIES = ["deepseek-vl-hybrid", "llava", "smolvlm"]


@pytest.mark.parametrize("family", FAMILIES)
def test_labels_cover_the_title_and_end_of_turn_only(chat_models, synth, family, one_thread):
    model, processor = load_chat_vlm(str(chat_models[family]))
    records = load_split(synth, "train")[0][:2]
    images = [load_image(r.path) for r in records]
    titles = ["Two Eggs on a Red Plate", "A Blue Bowl of One Lime"]
    tok = processor.tokenizer
    prompts, feats = encode_images(model, processor, images, QUESTION)
    ends = end_of_turn_ids(model, tok)
    ids, mask, labels = training_batch(prompts, [answer_ids(processor, QUESTION, t, ends) for t in titles],
                                       tok.pad_token_id)
    # the reference: the processor's own assistant-token mask ({% generation %} markers of the template)
    chats = [conversation(im, QUESTION) + [{"role": "assistant", "content": [{"type": "text", "text": t}]}]
             for im, t in zip(images, titles)]
    ref = processor.apply_chat_template(chats, tokenize=True, return_dict=True, return_tensors="pt",
                                        return_assistant_tokens_mask=True, processor_kwargs={"padding": True})
    image_id = base_model(model).config.image_token_id
    for i, title in enumerate(titles):
        real = ids[i][mask[i] == 1]
        want = ref["input_ids"][i][ref["assistant_masks"][i] == 1]
        got = labels[i][labels[i] != -100].tolist()
        # title + end-of-turn, nothing else; plus the space the template writes between "Assistant:" (where the
        # generation prompt stops) and the title, which generation has to produce too
        assert got[len(got) - len(want):] == want.tolist() and not tok.decode(got[: len(got) - len(want)]).strip()
        assert tok.decode(want[:-1]).strip() == title and want[-1].item() in ends
        ref_real = ref["input_ids"][i][ref["attention_mask"][i] == 1]
        assert real.tolist() == ref_real[: len(real)].tolist()  # the same chat, image tokens expanded
        assert (labels[i][: len(prompts[i])] == -100).all() and (labels[i][mask[i] == 0] == -100).all()
        assert (ids[i] == image_id).sum() == len(feats[i]) and (labels[i][ids[i] == image_id] == -100).all()
    # the recipe's loss (logits kept on the answers only) is the model's own loss on these labels
    chat = ChatLoRA(model, processor, QUESTION)
    batch = {"prompt": prompts, "caption": titles, "features": torch.stack(feats)}
    cached = chat.vision_inputs(model, batch)
    assert "mm_encoder_outputs" in cached and "pixel_values" not in cached  # the tower does not run
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, labels=labels, **chat.vision_inputs(model, batch)).loss
        assert torch.allclose(chat.loss(model, batch), full, atol=1e-5)
        # the cached vision outputs give the loss that running the tower on the images gives
        tower = chat.loss(model, {"prompt": prompts, "caption": titles, "image": images})
        assert torch.allclose(chat.loss(model, batch), tower, atol=1e-5)


@pytest.fixture(scope="module", params=FAMILIES)
def trained(chat_models, synth, tmp_path_factory, one_thread, request):
    """A tiny chat VLM with a LoRA adapter trained for a few steps on cached vision outputs."""
    from types import SimpleNamespace

    model, processor = load_chat_vlm(str(chat_models[request.param]))
    cfg = SimpleNamespace(data_dir=str(synth), images_dir="", limit=24, cache_dir="", batch_size=8)
    data = chat_datasets(cfg, model, processor, QUESTION, ("train",))["train"]
    assert data.features is not None  # the vision cache engaged: the tower never runs while training
    model = add_lora(model, "r64")
    chat = ChatLoRA(model, processor, QUESTION, max_new_tokens=8)
    batch = chat_collate([data[i] for i in range(len(data))])
    before = chat.caption(model, batch)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    torch.manual_seed(0)
    model.train()
    losses = []
    for _ in range(25):
        loss = chat.loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    model.eval()
    folder = tmp_path_factory.mktemp("adapter") / "best"
    chat.save(model, folder, str(chat_models[request.param]))
    return chat, data, batch, before, losses, folder


def test_trained_adapter_changes_the_captions(trained):
    chat, _, batch, before, losses, _ = trained
    assert losses[-1] < 0.5 * losses[0], losses
    after = chat.caption(chat.model, batch)
    assert after != before
    from captioning.metrics import CiderD

    refs = [[c] for c in batch["caption"]]
    cider = CiderD(refs)
    assert cider.scores(after, refs).mean() > cider.scores(before, refs).mean() + 0.2  # closer to the titles


def test_save_load_and_caption_again_give_the_same_titles(trained):
    chat, data, batch, _, _, folder = trained
    assert (folder / "adapter" / "adapter_model.safetensors").is_file() and (folder / "captioner.json").is_file()
    cap = load_captioner(folder.parent, device="cpu")  # the run folder holding best/
    assert cap.describe()["family"] == "chat-vlm-lora"
    images = [load_image(r.path) for r in data.records[:6]]
    titles = [c.title for c in cap.caption(images)]
    assert titles == chat.caption(chat.model, chat_collate([data[i] for i in range(6)]))
    assert [cap.caption([im])[0].title for im in images] == titles  # batched == one at a time


def test_deepseek_script_captions_with_the_adapter(trained, synth, tmp_path):
    import importlib.util
    import json

    from conftest import ROOT

    chat, _, _, _, _, folder = trained
    if not type(chat.model.get_base_model()).__name__.startswith("DeepseekVL"):
        pytest.skip("one architecture is enough for the script's wiring")
    spec = importlib.util.spec_from_file_location("_deepseek_adapter", ROOT / "task2" / "deepseek.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "run"
    script.main(["--data-dir", str(synth), "--adapter", str(folder), "--limit", "4", "--output-dir", str(out),
                 "--max-new-tokens", "8", "--cache-dir", str(tmp_path / "cache")])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["info"]["question"] == QUESTION and "LoRA adapter" in saved["info"]["method"]


def test_photos_split_into_different_numbers_of_crops_are_cached_each_with_its_own(synth, tmp_path, one_thread):
    """SmolVLM as the hub ships it splits a photo into crops by its aspect ratio, so photos differ in their
    number of image tokens: the vision cache keeps each one's own, reads them back unchanged, and training
    on them gives the loss that running the tower gives."""
    from types import SimpleNamespace

    from PIL import Image
    from transformers import AutoTokenizer

    from captioning.synthetic import build_tiny_smolvlm, make_dataset

    build_tiny_smolvlm(tmp_path / "smolvlm", AutoTokenizer.from_pretrained(synth / "models" / "tokenizer"), split=True)
    model, processor = load_chat_vlm(str(tmp_path / "smolvlm"))
    make_dataset(tmp_path / "data", n=12, seed=5, dirty=False)
    cfg = SimpleNamespace(data_dir=str(tmp_path / "data"), images_dir="", limit=6, cache_dir=str(tmp_path / "cache"),
                          batch_size=4)
    records = load_split(tmp_path / "data", "train")[0][:6]
    for r, shape in zip(records, [(64, 32), (16, 64)]):  # landscape, a tall strip (the rest stay square)
        Image.open(r.path).resize(shape).save(r.path)
    data = chat_datasets(cfg, model, processor, QUESTION, ("train",))["train"]
    tokens = [data[i]["features"].shape[0] for i in range(len(data))]
    assert data.features is not None and len(set(tokens)) >= 3, tokens
    image_id = base_model(model).config.image_token_id
    assert tokens == [sum(t == image_id for t in p) for p in data.prompts]  # each prompt has its image's tokens
    again = chat_datasets(cfg, model, processor, QUESTION, ("train",))["train"]  # read back from the cache folder
    assert all(torch.equal(data[i]["features"], again[i]["features"]) for i in range(len(data)))
    chat = ChatLoRA(model, processor, QUESTION)
    batch = chat_collate([again[i] for i in range(len(again))])
    images = [load_image(r.path) for r in again.records]
    with torch.no_grad():
        tower = chat.loss(model, {"prompt": batch["prompt"], "caption": batch["caption"], "image": images})
        assert torch.allclose(chat.loss(model, batch), tower, rtol=1e-3)  # the cache stores float16
