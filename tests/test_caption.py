"""Issue 12: the caption command, model cards, publishing and the web page, on tiny runs trained here.

The module trains three tiny runs once (ViT-GPT2 fine-tuning, SCST from it on cached features, task2's
prefix LLM on its ViT) and checks that `captioning.caption` gives exactly the titles of each run's
predictions.csv, then drives the Gradio page with a real headless Chromium."""
import importlib.util
import json
import os
import re
import shutil
import socket
import sys
import weakref
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from captioning.config import run_main
from conftest import ROOT
from test_reliability import BROKEN, ODD, bomb_png, broken_images, odd_images

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread
TINY = ["--workers", "0", "--preset", "greedy", "--batch-size", "16", "--limit", "32", "--patience", "0",
        "--max-new-tokens", "8"]


def script(rel: str):
    path = ROOT / rel
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module.main


def call(capsys, main, *argv):
    """(exit code, stdout, stderr) of an entry point run as its __main__ would."""
    try:
        run_main(main, [str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def runs(synth, tmp_path_factory):
    """{name: run folder} of three tiny trained runs (as make demo trains them, shorter)."""
    root = tmp_path_factory.mktemp("runs")
    m = synth / "models"
    common = ["--data-dir", synth, "--overwrite", "--lr", "3e-3", "--epochs", "1", *TINY]
    script("task1/vit_gpt2_finetuned.py")([str(a) for a in [*common, "--model", m / "vit-gpt2", "--output-dir",
                                                             root / "vit_gpt2_finetuned"]])
    best = root / "vit_gpt2_finetuned" / "best"
    script("task1/vit_gpt2_finetuned_RL.py")([str(a) for a in [*common, "--model", best, "--samples", "2",
                                                                "--baseline", "mean", "--output-dir",
                                                                root / "vit_gpt2_finetuned_RL"]])
    script("task2/train.py")([str(a) for a in [*common, "--model", m / "llama", "--vision-model", best, "--pool",
                                                "4x4", "--output-dir", root / "llama_lora"]])
    return {p.name: p for p in sorted(root.iterdir())}


def test_caption_command_reproduces_every_trained_runs_predictions(runs, synth, tmp_path, capsys):
    from captioning.caption import check_run, main

    assert len(runs) == 3
    families = set()
    for run in runs.values():
        c = check_run(run)
        assert c["total"] > 0 and c["differ"] == [], c
        families.add(json.loads((run / "best" / "captioner.json").read_text())["settings"].get("encoder_features"))
    assert families == {None, "float16"}  # both ViT-GPT2 paths: pixels, and SCST's cached features
    # the command itself, every model side by side in one CSV, on the test images
    df = pd.read_csv(runs["llama_lora"] / "predictions.csv", dtype=str, keep_default_na=False)
    paths = [synth / "images" / f"{n}.jpg" for n in df.Image_Name]
    out = tmp_path / "titles.csv"
    models = [a for r in runs.values() for a in ("--model", r)]
    code, stdout, err = call(capsys, main, *models, "--out", out, "--quiet", *paths)
    assert code == 0, err[-2000:]
    got = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(got.columns) == ["path", *runs] and list(got.path) == [str(p) for p in paths]
    for name, run in runs.items():
        want = pd.read_csv(run / "predictions.csv", dtype=str, keep_default_na=False).prediction
        assert list(got[name]) == list(want), name
    assert f"{paths[0]} [llama_lora]: {got.llama_lora[0]}" in stdout.splitlines()
    import torch.distributed as dist

    assert not dist.is_initialized()  # one process (no launcher): nothing of torch.distributed is started


def test_a_chat_vlm_gives_the_titles_of_its_zero_shot_run(synth, tmp_path):
    from captioning.caption import check_run
    from captioning.captioner import load_captioner

    run = tmp_path / "deepseek"
    script("task2/deepseek.py")([str(a) for a in ["--model", synth / "models" / "deepseek-vl", "--data-dir", synth,
                                                   "--output-dir", run, "--limit", "4", "--max-new-tokens", "6",
                                                   "--workers", "0"]])
    vlm = load_captioner(synth / "models" / "deepseek-vl")
    vlm.max_new_tokens = 6  # the run's setting (a hub model has no manifest to carry it)
    assert vlm.describe()["family"] == "chat-vlm"
    c = check_run(run, vlm)
    assert c["total"] == 4 and c["differ"] == [], c


@pytest.fixture(scope="module")
def photos(synth, tmp_path_factory):
    """A folder of hostile kinds: odd images (captioned), broken ones (named skips), a WebP in a subfolder,
    a HEIC without its plugin, a link out of the folder, a FIFO, an empty folder."""
    d = tmp_path_factory.mktemp("photos")
    first = sorted((synth / "images").glob("dish-*.jpg"))[0]
    for name, raw in {**odd_images(), **broken_images(Image.open(first))}.items():
        (d / name).write_bytes(raw)
    (d / "sub").mkdir()
    Image.open(first).save(d / "sub" / "dish.webp")
    (d / "phone.heic").write_bytes(b"\0\0\0\x18ftypheic" + b"\0" * 40)
    outside = d.parent / f"{d.name}-secret.jpg"
    shutil.copy(first, outside)
    (d / "link-out.jpg").symlink_to(outside)
    os.mkfifo(d / "pipe.jpg")
    (d / "empty").mkdir()
    return d


def test_hostile_files_are_captioned_or_named(runs, photos, tmp_path, capsys):
    from captioning.caption import main

    out = tmp_path / "t.csv"
    code, stdout, err = call(capsys, main, "--model", runs["vit_gpt2_finetuned"], "--recursive", "--top-k", "2",
                             "--out", out, "--quiet", photos, str(photos / "odd-*.png"), tmp_path / "missing.jpg")
    assert code == 0, err[-3000:]
    got = pd.read_csv(out, dtype=str, keep_default_na=False)
    names = [Path(p).name for p in got.path]
    assert sorted(names) == sorted([*ODD, "dish.webp"])  # each once, though the glob names some again
    skips = dict(re.findall(r"^skipped (.+?): (.+)$", err, re.M))
    for name, why in {**BROKEN, "bad-empty.jpg": "empty file"}.items():
        assert why in skips[str(photos / name)], (name, skips)
    heic = "pillow-heif" if importlib.util.find_spec("pillow_heif") is None else "cannot decode"
    assert heic in skips[str(photos / "phone.heic")]
    assert skips[str(photos / "link-out.jpg")] == "link leading outside the folder"
    assert skips[str(photos / "pipe.jpg")] == "not a regular file"
    assert skips[str(tmp_path / "missing.jpg")] == "no such file or folder"
    alts = json.loads(got["vit_gpt2_finetuned top-2"][0])
    assert 1 <= len(alts) <= 2 and all(isinstance(t, str) and s <= 0 for t, s in alts)
    assert f"captioned {len(got)} image(s), skipped {len(skips)}" in err
    # without --recursive the subfolder's WebP is not read
    code, stdout, _ = call(capsys, main, "--model", runs["vit_gpt2_finetuned"], "--quiet", photos)
    assert code == 0 and "dish.webp" not in stdout and len(stdout.splitlines()) == len(ODD)


def test_what_cannot_be_captioned_is_one_sentence(runs, photos, tmp_path, capsys):
    from captioning.caption import main

    model = ["--model", runs["vit_gpt2_finetuned"]]
    code, _, err = call(capsys, main, *model, photos / "empty")
    assert code == 2 and "error: nothing to caption: the paths hold no files" in err and "Traceback" not in err
    code, _, err = call(capsys, main, *model, photos / "bad-text.jpg")
    assert code == 2 and "no file could be read as an image" in err
    code, _, err = call(capsys, main, "--model", photos / "empty", photos)
    assert code == 2 and "holds no captioner" in err and "Traceback" not in err
    kept = tmp_path / "kept.csv"
    kept.write_text("mine\n")
    code, _, err = call(capsys, main, *model, "--out", kept, photos / "odd-1x1.png")
    assert code == 2 and "already exists" in err and kept.read_text() == "mine\n"


class Counting:
    """A stand-in captioner that records how many decoded images are alive at once."""

    name, preset = "count", "greedy"

    def __init__(self):
        self.alive, self.peak, self.seen = 0, 0, 0

    def track(self, image):
        self.alive += 1
        self.peak = max(self.peak, self.alive)
        weakref.finalize(image, self._gone)
        return image

    def _gone(self):
        self.alive -= 1

    def caption(self, images, preset=None, top_k=0, max_new_tokens=None):
        from captioning.captioner import Caption

        self.seen += len(images)
        return [Caption(f"{im.size[0]}") for im in images]


def test_a_large_folder_streams_one_batch_at_a_time(tmp_path, monkeypatch):
    """Memory stays flat: 600 files, batch 8, never more than one batch of decoded images alive."""
    import captioning.caption as cc
    import captioning.data as data

    folder = tmp_path / "many"
    folder.mkdir()
    tiny = tmp_path / "t.png"
    Image.new("RGB", (8, 8), (200, 80, 20)).save(tiny)
    for i in range(600):
        os.link(tiny, folder / f"{i:04d}.png")
    counter = Counting()
    real = data.load_image
    monkeypatch.setattr(data, "load_image", lambda p: counter.track(real(p)))
    result = cc.caption_paths([counter], [str(folder)], batch_size=8, echo=lambda s: None, progress=False)
    assert result["captioned"] == counter.seen == 600 and counter.peak <= 8 + 1, counter.peak


def test_titles_written_into_the_captioned_folder_are_not_taken_for_photos(tmp_path, capsys):
    """--out inside the folder being captioned: neither the CSV (on a second run, with --overwrite) nor its
    temporary file while it is written is listed, or named as a skipped file."""
    import captioning.caption as cc

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (200, 80, 20 * i)).save(folder / f"{i}.png")
    out = folder / "titles.csv"
    for overwrite in (False, True):
        result = cc.caption_paths([Counting()], [str(folder)], batch_size=2, out=str(out), overwrite=overwrite,
                                  echo=lambda s: None, progress=False)
        assert result["captioned"] == 3 and result["skipped"] == [], result["skipped"]
        assert "skipped" not in capsys.readouterr().err
        assert len(pd.read_csv(out)) == 3 and sorted(p.name for p in folder.iterdir()) == \
            ["0.png", "1.png", "2.png", "titles.csv"]


def test_every_best_folder_has_a_model_card_that_works(runs, synth):
    from huggingface_hub import ModelCard

    from captioning.captioner import load_captioner
    from captioning.data import load_image

    for run in runs.values():
        card = ModelCard.load(run / "best" / "README.md")
        metrics = json.loads((run / "metrics.json").read_text())
        assert card.data.pipeline_tag == "image-to-text"
        reported = {r.metric_name: r.metric_value for r in card.data.eval_results}
        assert reported["CIDEr (test)"] == round(metrics["test"]["CIDEr"], 4)
        assert f"python -m captioning.caption --model {run / 'best'}" in card.text
        assert "| lr | `0.003` |" in card.text and "hf_token" not in card.text
    # the report's gallery names each run's family and preset and links its card
    from captioning.report import gallery

    page = gallery(list(runs.values()), runs["llama_lora"].parent, n=2).read_text()
    assert "<div class=model>prefix-llm &middot; greedy &middot; <a href=\"llama_lora/best/README.md\">" in page
    # the "transformers alone" example of a ViT-GPT2 card runs as written and gives the toolkit's title
    run = runs["vit_gpt2_finetuned"]
    code = re.search(r"```python\n(.*?)```", (run / "best" / "README.md").read_text(), re.S).group(1)
    photo = sorted((synth / "images").glob("dish-*.jpg"))[1]
    printed = []
    exec(code.replace('"dish.jpg"', repr(str(photo))), {"print": printed.append})
    from captioning.text import normalize

    assert [normalize(printed[0])] == [c.title for c in load_captioner(run).caption([load_image(photo)])]


def test_publish_uploads_best_with_its_card_and_never_shows_the_token(runs, monkeypatch, capsys):
    from captioning import publish

    run = runs["vit_gpt2_finetuned"]
    code, _, err = call(capsys, publish.main, run, "me/food-titles", "--token", "hf_SECRET12345")
    assert code == 2 and "HF_HUB_OFFLINE" in err and "hf_SECRET" not in err  # the suite runs offline

    class Hub:  # records what would go to the Hub, then refuses the second upload as the Hub would
        calls = []

        def create_repo(self, repo_id, **kw):
            self.calls.append(("create", repo_id, kw["token"]))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, folder_path, repo_id, **kw):
            card = (Path(folder_path) / "README.md").read_text()
            self.calls.append(("upload", Path(folder_path).name, "--model me/food-titles" in card))
            if len(self.calls) > 2:
                raise PermissionError("403 Forbidden: token hf_SECRET12345 cannot write to me/food-titles")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    url = publish.publish(run, "me/food-titles", "hf_SECRET12345", api=Hub())
    assert url.endswith("me/food-titles")
    assert Hub.calls == [("create", "me/food-titles", "hf_SECRET12345"), ("upload", "best", True)]
    assert "--model me/food-titles" not in (run / "best" / "README.md").read_text()  # local card again
    monkeypatch.setattr("huggingface_hub.HfApi", Hub)
    code, _, err = call(capsys, publish.main, run, "me/food-titles", "--token", "hf_SECRET12345")
    assert code == 2 and "refused the upload" in err and "hf_SECRET" not in err and "<token>" in err
    code, _, err = call(capsys, publish.main, run, "not a repo id")
    assert code == 2 and "OWNER/NAME" in err


# --------------------------------------------------------------------------------------- web page
def test_page_answers_bad_uploads_with_a_message(runs, photos):
    from captioning.app import make_title
    from captioning.captioner import load_captioner

    from captioning.data import load_image

    ft = load_captioner(runs["vit_gpt2_finetuned"])
    title = make_title([ft], ["ft"], top_k=2)
    assert "Choose a photo" in title(None)[-1]
    bomb = photos.parent / "huge.png"
    bomb.write_bytes(bomb_png())
    assert "decompression bomb" in title(str(bomb))[-1]
    assert "not an image" in title(str(photos / "bad-text.jpg"))[-1]
    out = title(str(photos / "odd-exif.jpg"), "Real Soup")
    assert out[0] == ft.caption([load_image(photos / "odd-exif.jpg")])[0].title
    assert out[1].startswith("**ft**: ") and out[2] == "Real title: **Real Soup**"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.mark.skipif(not (CHROMIUM and DRIVER),
                    reason="Debian's chromium and chromium-driver are not installed (make setup installs them)")
def test_browser_uploads_photos_and_reads_every_models_title(runs, synth, photos, tmp_path, monkeypatch):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from captioning.app import build, examples_of
    from captioning.caption import caption_paths
    from captioning.captioner import load_captioner

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))  # uploads and examples land here
    captioners = [load_captioner(runs[n]) for n in ("vit_gpt2_finetuned", "llama_lora")]
    dishes = sorted((synth / "images").glob("dish-*.jpg"))[5:7]
    expected = caption_paths(captioners, [str(p) for p in dishes], echo=lambda s: None, progress=False)["titles"]
    examples = examples_of(captioners, 2)
    page = build(captioners, examples)
    port = free_port()
    page.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                max_file_size="25mb")
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,900"):
        options.add_argument(arg)
    browser = webdriver.Chrome(options=options, service=Service(DRIVER))
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "input[type=file]"))

        def titles():
            return [e.get_attribute("value") for e in browser.find_elements(By.CSS_SELECTOR, ".title textarea")]

        def message():
            return browser.find_element(By.ID, "message").text

        def upload(path):
            browser.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(path))

        upload(dishes[0])
        wait.until(lambda b: titles() == expected[str(dishes[0])])
        browser.save_screenshot(str(tmp_path / "app.png"))
        if os.environ.get("FOODCAP_SCREENSHOT"):  # keep a copy of the picture there
            shutil.copy(tmp_path / "app.png", os.environ["FOODCAP_SCREENSHOT"])
        assert (tmp_path / "app.png").stat().st_size > 10_000
        notes = tmp_path / "notes.txt"
        notes.write_text("not a photo")
        upload(notes)  # the page's own check: only images
        wait.until(lambda b: "Invalid file type" in b.page_source)
        upload(photos / "bad-text.jpg")  # text named .jpg: reaches the server, whose loader says why
        wait.until(lambda b: "not an image" in message() and titles() == ["", ""])
        upload(dishes[1])  # the server kept serving
        wait.until(lambda b: titles() == expected[str(dishes[1])] and message() == "")
        browser.find_element(By.CSS_SELECTOR, "[data-testid='dataset-cell-0-0']").click()
        wait.until(lambda b: f"Real title: {examples[0][1]}" in message())
        assert titles() == [c.title for c in (cap.caption([Image.open(examples[0][0]).convert("RGB")])[0]
                                              for cap in captioners)]
    finally:
        browser.quit()
        page.close()
