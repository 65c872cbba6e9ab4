r"""Move the image files that no CSV references out of the images folder, into a quarantine folder
beside it, with a manifest that --undo reverses byte for byte.

Only regular image files (.jpg, .jpeg, .png) directly inside --images-dir are ever considered:
names in the CSVs are only compared against that listing, so a CSV (with `../` or absolute paths)
cannot make this touch anything else, and symlinks are neither followed nor moved.

    python imageCleaning/remove_images.py --images-dir data/images --csv data_clean/train_data.csv \
        --csv data_clean/valid_data.csv --csv data_clean/test_data.csv [--dry-run]
    python imageCleaning/remove_images.py --undo data/images_quarantine/<stamp>/manifest.csv
    python imageCleaning/remove_images.py --images-dir data/images --csv ... --delete [--yes]

The quarantine is IMAGES_quarantine/<date-time>/ beside the images folder; its manifest.csv holds
original path, new path, size and sha256 of every file moved. --delete removes the files for good
(after a confirmation, or --yes) and keeps the manifest as a record.
"""
from __future__ import annotations

import argparse
import errno
import hashlib
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from captioning.config import UserError, run_main
from captioning.data import IMAGE_EXTS, log, read_csv, resolve_image

MANIFEST_COLUMNS = ["original", "new", "size", "sha256"]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def referenced_names(root: Path, csvs) -> set[str]:
    """File names inside root that some CSV row points at (as the training scripts resolve them)."""
    names = set()
    for csv in csvs:
        for name in read_csv(csv, required=("Image_Name",))["Image_Name"]:
            path = resolve_image(root, name)
            if path is not None:
                names.add(path.name)
                names.add(path.resolve().name)  # a symlink inside root keeps its target too
    return names


def unreferenced(root: Path, keep: set[str]) -> tuple[list[Path], int]:
    """Regular image files directly in root that are not in keep, and how many symlinks were skipped."""
    files, links = [], 0
    with os.scandir(root) as entries:
        for e in entries:
            if e.is_symlink():
                links += 1
            elif e.is_file(follow_symlinks=False) and e.name.lower().endswith(IMAGE_EXTS) \
                    and e.name not in keep:
                files.append(root / e.name)
    return sorted(files), links


def write_manifest(rows: list[dict], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    pd.DataFrame(rows, columns=MANIFEST_COLUMNS).to_csv(tmp, index=False)
    os.replace(tmp, path)


def new_quarantine(root: Path) -> Path:
    base = root.parent / f"{root.name}_quarantine"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        folder = base / (stamp if i == 0 else f"{stamp}-{i}")
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
    raise UserError(f"cannot create a new quarantine folder in {base}.")


def move(src: Path, dst: Path, digest: str) -> None:
    """Rename src to dst (never over an existing file); across filesystems copy, verify, then unlink."""
    if dst.exists() or dst.is_symlink():
        raise FileExistsError(dst)
    try:
        os.rename(src, dst)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        shutil.copy2(src, dst)
        if sha256(dst) != digest:
            dst.unlink()
            raise OSError(f"copy of {src} does not match the original") from None
        src.unlink()


def remove(a) -> dict:
    images = Path(a.images_dir)
    if not images.is_dir():
        raise UserError(f"images folder {images} does not exist or is not a folder.")
    if not a.csv:
        raise UserError("name at least one --csv whose Image_Name column lists the images to keep.")
    root = images.resolve()
    keep = referenced_names(root, a.csv)
    if not keep:
        raise UserError(f"no Image_Name in {', '.join(a.csv)} matches a file in {images}; refusing to treat "
                        "every image as unreferenced (check --images-dir).")
    files, links = unreferenced(root, keep)
    size = sum(f.stat().st_size for f in files)
    print(f"{len(files)} unreferenced image(s), {size / 1e6:.1f} MB, in {root} "
          f"({len(keep)} referenced{f', {links} symlink(s) left alone' if links else ''})")
    for f in files[:20]:
        print(f"  {f.name}")
    if len(files) > 20:
        print(f"  ... and {len(files) - 20} more")
    if a.dry_run or not files:
        print("dry run: nothing changed." if a.dry_run else "nothing to do.")
        return {"files": len(files), "moved": 0}
    if a.delete and not a.yes:
        if not sys.stdin.isatty():
            raise UserError("--delete asks for confirmation on a terminal; pass --yes to delete without it.")
        if input(f"Delete these {len(files)} file(s) for good? [y/N] ").strip().lower() not in ("y", "yes"):
            print("nothing deleted.")
            return {"files": len(files), "moved": 0}
    folder = new_quarantine(root)
    rows = [{"original": str(f), "new": "" if a.delete else str(folder / f.name), "size": f.stat().st_size,
             "sha256": sha256(f)} for f in tqdm(files, desc="hashing", unit="file", mininterval=1)]
    manifest = folder / ("deleted.csv" if a.delete else "manifest.csv")
    write_manifest(rows, manifest)  # written first: an interrupted move can still be undone
    for row in tqdm(rows, desc="deleting" if a.delete else "moving", unit="file", mininterval=1):
        src = Path(row["original"])
        if a.delete:
            src.unlink()
        else:
            move(src, Path(row["new"]), row["sha256"])
    verb = "deleted" if a.delete else "moved"
    print(f"{verb} {len(rows)} file(s); manifest: {manifest}")
    if not a.delete:
        print(f"undo with: python imageCleaning/remove_images.py --undo {shlex.quote(str(manifest))}")
    return {"files": len(files), "moved": len(rows), "manifest": str(manifest)}


def undo(manifest_path: str) -> dict:
    manifest = Path(manifest_path)
    df = read_csv(manifest, required=tuple(MANIFEST_COLUMNS))
    folder = manifest.resolve().parent
    homes = {Path(p).parent.resolve() for p in df["original"]}
    if len(homes) != 1:
        raise UserError(f"{manifest} lists files from more than one folder; it was not written by this tool.")
    home = homes.pop()
    if not home.is_dir():
        raise UserError(f"the images folder {home} named in {manifest} does not exist.")
    restored, skipped = 0, []
    for row in tqdm(df.to_dict("records"), desc="restoring", unit="file", mininterval=1):
        dst, src = Path(row["original"]), Path(row["new"]) if row["new"] else None
        if src is None:
            skipped.append(f"{dst.name} (deleted, cannot be restored)")
        elif src.is_symlink() or src.resolve().parent != folder or dst.resolve().parent != home:
            skipped.append(f"{dst.name} (path outside the quarantine or images folder)")
        elif not src.is_file():
            why = "already back" if dst.is_file() else "missing from the quarantine"
            skipped.append(f"{dst.name} ({why})")
        elif dst.exists() or dst.is_symlink():
            skipped.append(f"{dst.name} (a file of that name is already in {home})")
        elif src.stat().st_size != int(row["size"]) or sha256(src) != row["sha256"]:
            skipped.append(f"{dst.name} (changed since it was moved)")
        else:
            move(src, dst, row["sha256"])
            restored += 1
    print(f"restored {restored} of {len(df)} file(s) into {home}")
    if skipped:
        log(f"skipped {len(skipped)}: {'; '.join(skipped[:5])}{'; ...' if len(skipped) > 5 else ''}")
    elif manifest.name == "manifest.csv" and [p.name for p in folder.iterdir()] == ["manifest.csv"]:
        # everything is back: the quarantine folder (and its parent, when that empties) goes too
        manifest.unlink()
        folder.rmdir()
        if folder.parent.name.endswith("_quarantine") and not any(folder.parent.iterdir()):
            folder.parent.rmdir()
        print(f"removed the empty quarantine folder {folder}")
    return {"restored": restored, "skipped": len(skipped)}


def main(argv=None):
    p = argparse.ArgumentParser(prog="imageCleaning/remove_images.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images-dir", help="the folder of images to tidy")
    p.add_argument("--csv", action="append", default=[], metavar="CSV",
                   help="a CSV with an Image_Name column; repeat for every split (images no CSV names go)")
    p.add_argument("--dry-run", action="store_true", help="list what would be moved and change nothing")
    p.add_argument("--undo", metavar="MANIFEST", help="put back every file listed in this manifest.csv")
    p.add_argument("--delete", action="store_true", help="delete for good instead of moving to quarantine")
    p.add_argument("--yes", action="store_true", help="with --delete: do not ask for confirmation")
    a = p.parse_args(argv)
    if a.undo:
        return undo(a.undo)
    if not a.images_dir:
        raise UserError("pass --images-dir (and --csv ...), or --undo MANIFEST.")
    return remove(a)


if __name__ == "__main__":
    run_main(main)
