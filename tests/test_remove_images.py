"""imageCleaning/remove_images.py: dry run, move + undo byte for byte, hostile names and manifests,
delete confirmation, clean refusals."""
import hashlib
import os
import shlex
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from conftest import ROOT, assert_clean_failure, run_cli

SCRIPT = ROOT / "imageCleaning" / "remove_images.py"


def snapshot(root: Path) -> dict:
    """Every path under root (links not followed) -> file digest, link target or 'dir'."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                out[str(p.relative_to(root))] = "link->" + os.readlink(p)
            elif p.is_file():
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[str(p.relative_to(root))] = "dir"
    return out


@pytest.fixture
def world(tmp_path):
    """tmp/data/images with 3 referenced and 3 unreferenced images, plus things that must never move:
    a file outside the folder, a symlink to it, a subfolder, a text file. The folders' names have spaces,
    as the Kaggle download's "Food Images" has."""
    tmp_path = tmp_path / "Food Images"
    images = tmp_path / "data" / "images"
    images.mkdir(parents=True)
    for i in range(6):
        Image.new("RGB", (8 + i, 8), (40 * i, 10, 200)).save(images / f"img{i}.{'png' if i == 4 else 'jpg'}")
    (tmp_path / "secret.jpg").write_bytes(b"not yours")
    (images / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    (images / "sub").mkdir()
    Image.new("RGB", (4, 4)).save(images / "sub" / "nested.jpg")
    (images / "notes.txt").write_text("keep me")
    csv = tmp_path / "data" / "train_data.csv"
    pd.DataFrame({"Title": ["a", "b", "c", "evil", "evil2", "evil3"],
                  "Image_Name": ["img0", "img1.jpg", "img2", "../secret.jpg", str(tmp_path / "secret.jpg"),
                                 "../../etc/passwd"]}).to_csv(csv, index=False)
    return tmp_path, images, csv


def test_dry_run_changes_nothing(world):
    tmp, images, csv = world
    before = snapshot(tmp)
    proc = run_cli(SCRIPT, "--images-dir", images, "--csv", csv, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "3 unreferenced" in proc.stdout and "img3.jpg" in proc.stdout and "dry run" in proc.stdout
    assert snapshot(tmp) == before


def test_move_then_undo_restores_every_byte(world):
    tmp, images, csv = world
    before = snapshot(tmp)
    proc = run_cli(SCRIPT, "--images-dir", images, "--csv", csv)
    assert proc.returncode == 0, proc.stderr
    quarantine = tmp / "data" / "images_quarantine"
    manifest = next(quarantine.glob("*/manifest.csv"))
    rows = pd.read_csv(manifest, dtype=str)
    assert list(rows.columns) == ["original", "new", "size", "sha256"]
    assert sorted(Path(p).name for p in rows.original) == ["img3.jpg", "img4.png", "img5.jpg"]
    for r in rows.to_dict("records"):
        moved = Path(r["new"])
        assert moved.parent == manifest.parent and not Path(r["original"]).exists()
        assert hashlib.sha256(moved.read_bytes()).hexdigest() == r["sha256"]
        assert moved.stat().st_size == int(r["size"])
    # referenced images, the outside file, the symlink, the subfolder and the text file stay
    left = snapshot(images)
    assert {"img0.jpg", "img1.jpg", "img2.jpg", "link.jpg", "sub", "sub/nested.jpg", "notes.txt"} == set(left)
    assert (tmp / "secret.jpg").read_bytes() == b"not yours"

    # the printed undo command works pasted into a shell as it is; afterwards no empty quarantine is left
    line = next(x for x in proc.stdout.splitlines() if x.startswith("undo with: "))
    argv = shlex.split(line[len("undo with: "):])
    assert argv[:3] == ["python", "imageCleaning/remove_images.py", "--undo"] and argv[3:] == [str(manifest)]
    undo = run_cli(SCRIPT, *argv[2:])
    assert undo.returncode == 0, undo.stderr
    assert "restored 3 of 3" in undo.stdout
    assert snapshot(tmp) == before


def test_hostile_names_and_manifests_cannot_reach_outside(world):
    tmp, images, csv = world
    outside = tmp / "outside"
    outside.mkdir()
    (outside / "victim.jpg").write_bytes(b"precious")
    pd.DataFrame({"Title": ["x"] * 3, "Image_Name": ["../outside/victim.jpg", str(outside / "victim.jpg"),
                                                     "img0"]}).to_csv(tmp / "evil.csv", index=False)
    proc = run_cli(SCRIPT, "--images-dir", images, "--csv", tmp / "evil.csv")
    assert proc.returncode == 0, proc.stderr
    assert (outside / "victim.jpg").read_bytes() == b"precious"
    assert (tmp / "secret.jpg").read_bytes() == b"not yours" and (images / "link.jpg").is_symlink()
    manifest = next((tmp / "data" / "images_quarantine").glob("*/manifest.csv"))
    assert all(Path(p).parent == images.resolve() for p in pd.read_csv(manifest).original)

    # an edited manifest that points outside the quarantine is refused entry by entry
    evil = manifest.parent / "evil-manifest.csv"
    pd.DataFrame([{"original": str(images / "stolen.jpg"), "new": str(outside / "victim.jpg"), "size": 8,
                   "sha256": hashlib.sha256(b"precious").hexdigest()}]).to_csv(evil, index=False)
    undo = run_cli(SCRIPT, "--undo", evil)
    assert undo.returncode == 0 and "restored 0 of 1" in undo.stdout and "outside" in undo.stderr
    assert (outside / "victim.jpg").read_bytes() == b"precious" and not (images / "stolen.jpg").exists()


def test_delete_needs_confirmation(world):
    tmp, images, csv = world
    before = snapshot(tmp)
    assert_clean_failure(run_cli(SCRIPT, "--images-dir", images, "--csv", csv, "--delete"), "--yes")
    assert snapshot(tmp) == before
    proc = run_cli(SCRIPT, "--images-dir", images, "--csv", csv, "--delete", "--yes")
    assert proc.returncode == 0, proc.stderr
    left = sorted(p.name for p in images.iterdir())
    assert left == ["img0.jpg", "img1.jpg", "img2.jpg", "link.jpg", "notes.txt", "sub"]
    record = next((tmp / "data" / "images_quarantine").glob("*/deleted.csv"))
    assert len(pd.read_csv(record)) == 3


def test_refusals_are_one_sentence(world):
    tmp, images, csv = world
    (tmp / "no_names.csv").write_text("Title,Picture\na,img0\n")
    (tmp / "other.csv").write_text("Title,Image_Name\na,someone-else\n")
    before = snapshot(tmp)
    assert_clean_failure(run_cli(SCRIPT, "--images-dir", images, "--csv", tmp / "no_names.csv"), "Image_Name")
    assert_clean_failure(run_cli(SCRIPT, "--images-dir", images, "--csv", tmp / "other.csv"), "refusing")
    assert_clean_failure(run_cli(SCRIPT, "--images-dir", tmp / "nope", "--csv", csv), "does not exist")
    assert_clean_failure(run_cli(SCRIPT, "--images-dir", images), "--csv")
    assert snapshot(tmp) == before
