"""Odd but valid inputs that users have: animated GIFs, HEIC/AVIF, read-only data, strange file names, symlink
loops, a folder that changes during the run, and a single tar that is truncated or holds unsafe member
names (it behaves like a shard: what is intact is used, the rest is counted)."""

from __future__ import annotations

import io
import os
import shutil
import stat
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from openseer.config import load_config
from openseer.data import BadImage, PretrainDataset, load_rgb, open_source
from openseer.data.transforms import MultiCropTransform
from openseer.train import pretrain
from tests.helpers import TINY_OVERRIDES, png_bytes, write_images, write_tar


def _cfg(data: Path, *extra: str):
    return load_config("demo", [*TINY_OVERRIDES, f"data.path={data}", *extra])


def _skips(source) -> list[tuple[str, str]]:
    """Every (name, reason) that reading every image of ``source`` once through PretrainDataset reports."""
    cfg = _cfg("x")
    dataset = PretrainDataset(source, MultiCropTransform(cfg.aug))
    return sorted({s for i in range(len(source)) for s in dataset[i][2]} | set(source.skipped))


def test_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (20, 20), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    path = tmp_path / "imgs" / "anim.gif"
    path.parent.mkdir()
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    conversions: list[str] = []
    img = load_rgb(path.read_bytes(), conversions=conversions)
    assert img.mode == "RGB" and img.getpixel((10, 10)) == (255, 0, 0) and "animated" in conversions
    assert open_source(tmp_path / "imgs").name(0) == "anim.gif"  # .gif is an image suffix


def _heic_bytes() -> bytes:
    """The start of a HEIC file: an ISO base media ``ftyp`` box with the heic brand, then a meta box."""
    ftyp = b"ftypheic\x00\x00\x00\x00mif1heic"
    return (len(ftyp) + 4).to_bytes(4, "big") + ftyp + b"\x00\x00\x00\x10meta" + bytes(200)


def test_heic_needs_its_plugin_and_the_skip_names_it(tmp_path):
    try:
        import pillow_heif  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("pillow-heif is installed: HEIC files are decoded (this checks the skip without it)")
    with pytest.raises(BadImage) as info:
        load_rgb(_heic_bytes())
    assert info.value.reason == "needs_pillow_heif" and "pip install pillow-heif" in str(info.value)
    folder = write_images(tmp_path / "imgs", 3)
    (folder / "phone.heic").write_bytes(_heic_bytes())
    assert ("phone.heic", "needs_pillow_heif") in _skips(open_source(folder))


def test_avif_is_decoded_when_pillow_can(tmp_path):
    if not features.check("avif"):
        pytest.skip("this Pillow has no AVIF codec")
    y, x = np.mgrid[0:24, 0:32]
    arr = np.stack([x * 8, y * 10, np.full_like(x, 128)], axis=-1).astype(np.uint8)  # smooth: codes well
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "AVIF", quality=100)
    img = load_rgb(buf.getvalue())
    assert img.size == (32, 24) and img.mode == "RGB"
    assert np.abs(np.asarray(img, dtype=np.int16) - arr).mean() < 8  # lossy, but the same picture


def test_read_only_data_is_read_and_never_written(tmp_path):
    data = write_images(tmp_path / "imgs", 16)
    before = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in data.rglob("*")}
    for p in [*data.rglob("*"), data]:
        p.chmod(stat.S_IRUSR | stat.S_IRGRP | (stat.S_IXUSR | stat.S_IXGRP if p.is_dir() else 0))
    try:
        summary = pretrain(_cfg(data, "train.max_steps=2"), tmp_path / "run")
    finally:
        for p in [data, *data.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    assert summary["status"] == "completed" and summary["skipped_images"] == 0
    assert {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in data.rglob("*")} == before


ODD_NAMES = ["with space.png", "ünïcødé ✓ 猫.png", "new\nline.png", "tab\there.png", "-leading-dash.png"]


def test_odd_file_names_in_folders_and_tars(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for k, name in enumerate(ODD_NAMES):
        (folder / name).write_bytes(png_bytes(k, 20))
    archive = write_tar(tmp_path / "odd.tar", [(f"d/{n}", png_bytes(k, 20)) for k, n in enumerate(ODD_NAMES)])
    for source, prefix in ((open_source(folder), ""), (open_source(archive), "d/")):
        assert sorted(source.name(i) for i in range(len(source))) == sorted(prefix + n for n in ODD_NAMES)
        assert all(load_rgb(source.read(i)).size == (20, 20) for i in range(len(source)))
        assert _skips(source) == []
    summary = pretrain(_cfg(folder, "train.batch_size=4", "train.max_steps=1"), tmp_path / "run")
    assert summary["status"] == "completed" and summary["skipped_images"] == 0


def test_symlink_loops_are_counted_not_followed(tmp_path):
    data = write_images(tmp_path / "imgs", 16)
    os.symlink(data, data / "sub0" / "back_to_root")  # a folder loop
    os.symlink(data / "self.png", data / "self.png")  # a link to itself (ELOOP)
    os.symlink(tmp_path / "gone.png", data / "dangling.png")
    source = open_source(data)
    assert len(source) == 16
    assert source.skipped == [
        ("dangling.png", "broken_link"),
        ("self.png", "symlink_loop"),
        ("sub0/back_to_root", "symlink_loop"),
    ]
    summary = pretrain(_cfg(data, "train.max_steps=1"), tmp_path / "run")
    assert summary["status"] == "completed"
    assert summary["skipped_by_reason"] == {"broken_link": 1, "symlink_loop": 2}


def test_files_deleted_or_added_between_epochs(tmp_path):
    """Deleted files are counted as 'missing' and replaced; files added during the run are not read until a
    new run lists the folder again (the epoch plan depends on the listing)."""
    data = write_images(tmp_path / "imgs", 24)
    doomed = sorted(data.rglob("*.png"))[:2]

    def change_folder(step: int, loss: float) -> None:
        if step == 3:  # end of epoch 0
            for p in doomed:
                p.unlink()
            shutil.copy(data / "sub1" / "0001.png", data / "added.png")

    summary = pretrain(_cfg(data, "train.epochs=2"), tmp_path / "run", on_step=change_folder)
    assert summary["status"] == "completed" and summary["steps"] == 6
    assert summary["skipped_by_reason"] == {"missing": 2}  # every image is drawn once per epoch
    assert set(summary["skipped"]) == {str(p.relative_to(data)) for p in doomed}


def test_truncated_single_tar_with_unsafe_members_trains_on_what_is_intact(tmp_path):
    members = [(f"img/{k:03d}.png", png_bytes(k, 24)) for k in range(20)]
    members += [("../../escape.png", png_bytes(98, 24)), ("/abs/escape.png", png_bytes(99, 24))]
    archive = write_tar(tmp_path / "data" / "photos.tar", members) if (tmp_path / "data").mkdir() is None else None
    raw = archive.read_bytes()
    with tarfile.open(archive) as tar:
        cut = next(m.offset for m in tar.getmembers() if m.name == "img/017.png") + 700  # inside 017's data
    archive.write_bytes(raw[:cut])
    before = sorted(p.name for p in tmp_path.rglob("*"))
    summary = pretrain(_cfg(archive, "train.max_steps=2"), tmp_path / "run")
    assert summary["status"] == "completed"
    assert summary["skipped_by_reason"] == {"tar_truncated": 1}  # the unsafe members come after the cut
    archive.write_bytes(raw)  # whole again: the unsafe members are counted, nothing lands outside the data
    summary = pretrain(_cfg(archive, "train.max_steps=2"), tmp_path / "run2")
    assert summary["skipped_by_reason"] == {"unsafe_member": 2}
    assert set(summary["skipped"]) == {"../../escape.png", "/abs/escape.png"}
    after = sorted(p.name for p in tmp_path.rglob("*") if "run" not in p.parts[-1] and p.parent.name != "run")
    assert "escape.png" not in after and "escape.png" not in before
    assert len(open_source(archive)) == 20
