"""captioning.data and captioning.text: CSV reading, row cleaning, safe paths, image loading, split."""
import io
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from captioning.config import UserError
from captioning.data import (ImageError, clean_rows, course_split, load_image, read_csv, resolve_image)
from captioning.text import normalize
from conftest import assert_clean_failure, run_cli


def test_normalize():
    assert normalize("  Two\u00a0Lemons\n on\ta  Plate\u200b ") == "Two Lemons on a Plate"
    assert normalize("ﬁsh") == "fish"  # NFKC ligature
    assert normalize(None) == "" and normalize(float("nan")) == ""
    assert normalize("a\x00b\x7fc") == "a b c"


def test_resolve_image_stays_inside(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "ok.jpg").write_bytes(b"x")
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"s")
    (images / "link.jpg").symlink_to(secret)
    (images / "inner.png").write_bytes(b"y")
    assert resolve_image(images, "ok") == images.resolve() / "ok.jpg"
    assert resolve_image(images, "inner").name == "inner.png"
    assert resolve_image(images, "ok.jpg") is not None
    for bad in ["../secret", "../secret.jpg", str(secret), "/etc/passwd", "link", "..", "", "a/../ok"]:
        assert resolve_image(images, bad) is None, bad


def test_read_csv_variants(tmp_path):
    p = tmp_path / "a.csv"
    p.write_bytes("\ufeffTitle,Image_Name\nCrème Brûlée,x\n".encode("utf-8"))
    assert read_csv(p)["Title"][0] == "Crème Brûlée"  # BOM removed from the header
    p.write_bytes("Title,Image_Name\nCr\xe8me,x\n".encode("latin-1"))
    assert read_csv(p)["Title"][0] == "Crème"  # non-UTF-8 read as Latin-1
    for content, words in [("", "empty"), ("Title;Image_Name\na;b\n", "separated by ';'"),
                           ("Image_Name\nb\n", "no Title")]:
        p.write_text(content)
        with pytest.raises(UserError, match=words):
            read_csv(p)
    with pytest.raises(UserError, match="does not exist"):
        read_csv(tmp_path / "nope.csv")


def test_clean_rows_counts_reasons(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for n in ["a", "b", "c"]:
        Image.new("RGB", (4, 4)).save(images / f"{n}.jpg")
    df = pd.DataFrame({"Title": ["Soup", "#NAME?", "", "Stew", "Soup", "Pie", "X" * 5000],
                       "Image_Name": ["a", "b", "c", "missing", "a", "../a", "c"]}).astype(str)
    recs, skips = clean_rows(df, images)
    assert [r.image_name for r in recs] == ["a", "c"]
    assert skips == {"#NAME? title": 1, "empty title": 1, "missing image": 1, "duplicate row": 1,
                     "unsafe image name": 1}


def _png(mode, size=(20, 10), **kw):
    buf = io.BytesIO()
    if mode == "I;16":
        im = Image.fromarray((np.arange(200).reshape(10, 20) * 300).astype(np.uint16))
    else:
        im = Image.new(mode, size, **kw)
    im.save(buf, "PNG" if mode != "CMYK" else "JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA", "LA", "CMYK", "I;16", "1"])
def test_load_image_any_mode_is_rgb(tmp_path, mode):
    p = tmp_path / "x.img"
    p.write_bytes(_png(mode))
    im = load_image(p)
    assert im.mode == "RGB" and im.size == (20, 10)


def test_load_image_sixteen_bit_keeps_range(tmp_path):
    p = tmp_path / "x.png"
    p.write_bytes(_png("I;16"))
    a = np.asarray(load_image(p))
    assert a.max() > 200 and a.min() == 0  # scaled, not clipped to white


def test_load_image_alpha_on_white(tmp_path):
    p = tmp_path / "x.png"
    Image.new("RGBA", (3, 3), (255, 0, 0, 0)).save(p)
    assert load_image(p).getpixel((1, 1)) == (255, 255, 255)


def test_load_image_exif_orientation(tmp_path):
    p = tmp_path / "r.jpg"
    im = Image.new("RGB", (40, 20))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    im.save(p, exif=exif)
    assert load_image(p).size == (20, 40)


def test_load_image_failures(tmp_path):
    good = tmp_path / "g.jpg"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(good)
    cases = {"trunc.jpg": good.read_bytes()[:200], "empty.jpg": b"", "text.jpg": b"hello, not an image"}
    for name, raw in cases.items():
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(ImageError):
            load_image(tmp_path / name)
    png_as_jpg = tmp_path / "png.jpg"
    Image.new("RGB", (5, 5)).save(png_as_jpg, "PNG")
    assert load_image(png_as_jpg).size == (5, 5)
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)  # 400 Mpx: over PIL's bomb limit
    with pytest.raises(ImageError, match="bomb"):
        load_image(bomb)


def test_course_split_is_seeded_80_10_10():
    tr, va, te = course_split(1000, 42)
    assert (len(tr), len(va), len(te)) == (800, 100, 100)
    assert len(set(tr) | set(va) | set(te)) == 1000
    assert all((a == b).all() for a, b in zip(course_split(1000, 42), (tr, va, te)))
    assert not (course_split(1000, 7)[0] == tr).all()


def test_split_cli_on_kaggle_layout(tmp_path):
    food = tmp_path / "Food Images"
    food.mkdir()
    rows = []
    for i in range(50):
        Image.new("RGB", (8, 8), (i, i, i)).save(food / f"img-{i}.jpg")
        rows.append({"Unnamed: 0": i, "Title": f"Dish {i}", "Ingredients": "['salt']", "Image_Name": f"img-{i}"})
    rows += [{"Unnamed: 0": 50, "Title": "#NAME?", "Ingredients": "", "Image_Name": "img-1"},
             {"Unnamed: 0": 51, "Title": "", "Ingredients": "", "Image_Name": "img-2"},
             {"Unnamed: 0": 52, "Title": "Ghost", "Ingredients": "", "Image_Name": "gone"}]
    csv = tmp_path / "kaggle.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    out = tmp_path / "data"
    proc = run_cli("-m", "captioning.data", "split", "--csv", csv, "--images", food, "--out", out)
    assert proc.returncode == 0, proc.stderr
    sizes = {s: len(pd.read_csv(out / f"{s}_data.csv")) for s in ("train", "valid", "test")}
    assert sizes == {"train": 40, "valid": 5, "test": 5}
    train = pd.read_csv(out / "train_data.csv")
    assert "Ingredients" in train.columns and "Unnamed: 0" not in train.columns
    assert "kept 50 of 53" in proc.stdout
    before = {p: p.read_bytes() for p in out.iterdir()}
    proc2 = run_cli("-m", "captioning.data", "split", "--csv", csv, "--images", food, "--out", out)
    assert {p: p.read_bytes() for p in out.iterdir()} == before  # same seed, same files
    bad = run_cli("-m", "captioning.data", "split", "--csv", tmp_path / "none.csv", "--images", food, "--out", out)
    assert_clean_failure(bad, "does not exist")
    assert proc2.returncode == 0 and os.listdir(food)  # inputs untouched
