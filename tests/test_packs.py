"""Sharded image packs: exact round trip, crash safety, repair of damaged rows, and training that reads them
through a DataLoader with the same result as from an in-memory tensor."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.batches import BatchReader
from shared.config import PreprocessConfig, SiteDataConfig
from shared.imaging import pack, scan_site
from shared.imaging.cache import IngestCache
from shared.imaging.pack import from_pack, quantize, to_pack
from shared.models import build_model
from shared.packed import CorruptPackError, PackedImages, cat, from_cache, take, to_tensor
from shared.site_data import load_site_dataset
from shared.tasks.classification.dataset import SiteDataset
from shared.training import TrainConfig, train_model
from tests import dicom_factory as f

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[1]
SIZE = 16


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, SIZE, SIZE), dtype=np.float32)


def _packed_site(root: Path, n: int = 40, workers: int | None = None) -> tuple[PackedImages, torch.Tensor]:
    """``n`` random images written through the cache's writer; the packed view and the same images as a tensor."""
    cache = IngestCache(root, PreprocessConfig(image_size=SIZE))
    imgs = _images(n)
    shas = [hashlib.sha256(img.tobytes()).hexdigest() for img in imgs]
    for sha, img in zip(shas, imgs):
        cache.put_tensor(sha, img)
    cache.flush()
    packed = from_cache(IngestCache(root, PreprocessConfig(image_size=SIZE)), shas, (SIZE, SIZE), workers)
    return packed, torch.from_numpy(quantize(imgs))[:, None]


def test_uint16_round_trip_is_exact_and_within_half_a_step(tmp_path: Path) -> None:
    imgs = _images(5)
    q = to_pack(imgs)
    assert q.dtype == np.uint16 and from_pack(q).dtype == np.float32
    assert np.abs(from_pack(q) - imgs).max() <= 0.5 / 65535 + 1e-7  # the rounding, stated in shared/imaging/pack.py
    np.testing.assert_array_equal(to_pack(from_pack(q)), q)  # stored values survive another trip unchanged
    packed, tensor = _packed_site(tmp_path / "cache", n=5)
    cache = IngestCache(tmp_path / "cache", PreprocessConfig(image_size=SIZE))  # a fresh process's view
    for img in imgs:
        got = cache.get_tensor(hashlib.sha256(img.tobytes()).hexdigest())
        assert got.dtype == np.float32 and np.array_equal(got, quantize(img))  # a hit gives the bits a scan gave
    (shard,) = cache.shards()
    on_disk = np.load(shard["path"], mmap_mode="r")  # a shard is a plain .npy any numpy opens
    assert on_disk.dtype == np.uint16 and on_disk.shape == (pack.shard_capacity((SIZE, SIZE)), SIZE, SIZE)
    np.testing.assert_array_equal(on_disk[:5], to_pack(imgs))
    assert torch.equal(to_tensor(packed), tensor)


def test_packed_images_index_like_the_tensor(tmp_path: Path) -> None:
    packed, tensor = _packed_site(tmp_path / "cache", n=12)
    assert len(packed) == 12 and packed.shape == tensor.shape and packed.ndim == 4
    idx = torch.tensor([5, 0, 11, 5])
    for key in (3, -1, slice(2, 9, 3), [1, 4], idx, tensor[:, 0, 0, 0] > 0.5, (7, 0), (idx, 0)):
        assert torch.equal(packed[key], tensor[key]), key
    sub = take(packed, idx)  # addresses only
    assert isinstance(sub, PackedImages) and torch.equal(to_tensor(sub), tensor[idx])
    pooled = cat([sub, tensor[:3], packed])  # a packed part pooled with an in-memory one
    assert torch.equal(to_tensor(pooled), torch.cat([tensor[idx], tensor[:3], tensor]))
    with pytest.raises(IndexError):
        packed[12]


def test_the_dataloader_with_zero_workers_replays_the_order_deterministically(tmp_path: Path) -> None:
    packed, tensor = _packed_site(tmp_path / "cache", n=30)
    order = torch.randperm(30, generator=torch.Generator().manual_seed(1))
    starts = list(range(0, 30, 8))
    runs = []
    for _ in range(2):
        reader = BatchReader(packed, workers=0, pin_memory=False)
        runs.append([(idx.clone(), x) for idx, x in reader(order, starts, 8)])
        reader.close()
    for (ia, xa), (ib, xb) in zip(*runs):
        assert torch.equal(ia, ib) and torch.equal(xa, xb) and torch.equal(xa, tensor[ia])
    assert [len(i) for i, _ in runs[0]] == [8, 8, 8, 6]


@pytest.mark.parametrize("workers", [0, 2])
def test_training_on_packs_gives_the_weights_of_training_on_the_tensor(tmp_path: Path, workers: int) -> None:
    packed, tensor = _packed_site(tmp_path / "cache", n=40, workers=workers)
    labels = torch.arange(40) % 2
    cfg = TrainConfig(epochs=2, batch_size=8, seed=3, augment=1.0)
    weights = []
    for images in (tensor, packed):
        torch.manual_seed(0)
        model = build_model("smallcnn", 2, SIZE)
        data = SiteDataset(images=images, labels=labels, classes=["a", "b"])
        history = train_model(model, data.subset(list(range(32))), cfg, val=data.subset(list(range(32, 40))))
        weights.append((model.state_dict(), history))
    (w_tensor, h_tensor), (w_packed, h_packed) = weights
    assert all(torch.equal(w_tensor[k], w_packed[k]) for k in w_tensor)
    assert [h["loss"] for h in h_tensor] == [h["loss"] for h in h_packed]
    assert [h["val_auc"] for h in h_tensor] == [h["val_auc"] for h in h_packed]


def _export(folder: Path, n: int) -> Path:
    for i in range(n):
        f.write_image(folder / f"img{i:02d}.dcm", f.phantom(48, 48, seed=i))
    return folder


CRASH = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import shared.imaging.cache as cache
    import shared.imaging.pack as pack
    from shared.config import PreprocessConfig
    from shared.imaging.scan import scan_site
    pack.SHARD_ROWS, cache.COMMIT_ROWS = 4, 1000  # commits only when a shard is full
    def progress(done, total):
        if done == 10:  # ten images written: two full shards, two rows in a third
            os.kill(os.getpid(), signal.SIGKILL)
    scan_site(Path(sys.argv[1]), PreprocessConfig(image_size=16), Path(sys.argv[2]), progress, workers=1)
""")


def test_a_scan_killed_mid_way_keeps_its_finished_shards(tmp_path: Path) -> None:
    export = _export(tmp_path / "export", 14)
    cache = tmp_path / "cache"
    proc = subprocess.run([sys.executable, "-c", CRASH, str(export), str(cache)], cwd=REPO, timeout=100)
    assert proc.returncode == -9
    old = pack.SHARD_ROWS
    pack.SHARD_ROWS = 4
    try:
        again = scan_site(export, PreprocessConfig(image_size=16), cache, workers=1)
        assert again.cache.decoded == 14 - 8  # the two finished shards were kept
        shards = again.cache.shards()
        # the killed writer's third shard is taken over; no row is lost or written twice
        assert sum(s["used"] for s in shards) == 14 and len(shards) == 4
        fresh = scan_site(export, PreprocessConfig(image_size=16), tmp_path / "fresh", workers=1)
    finally:
        pack.SHARD_ROWS = old
    for a, b in zip(again.usable, fresh.usable):
        np.testing.assert_array_equal(again.load_image(a), fresh.load_image(b))


def test_a_row_damaged_after_loading_is_decoded_again_while_training_reads_it(tmp_path: Path) -> None:
    export = _export(tmp_path / "export" / "dicom", 6)
    labels = tmp_path / "export" / "labels.csv"
    first = scan_site(export, PreprocessConfig(image_size=16), tmp_path / "cache")
    uids = [r.header.sop_instance_uid for r in first.usable]
    labels.write_text(
        "SOPInstanceUID,label\n" + "".join(f"{u},{('normal', 'nodule')[i % 2]}\n" for i, u in enumerate(uids))
    )
    cfg = SiteDataConfig(data=export, labels=labels, image_size=16, cache_dir=tmp_path / "cache")
    reads = []
    real_read = pack.READER.read
    pack.READER.read = lambda *a: (reads.append(a), real_read(*a))[1]  # type: ignore[method-assign]
    try:
        data, _ = load_site_dataset(cfg)
        assert reads == [], "loading a site from the cache reads no pixels"
    finally:
        pack.READER.read = real_read  # type: ignore[method-assign]
    good = to_tensor(data.images).clone()
    (shard,) = (tmp_path / "cache" / "packs").rglob("*.npy")
    arr = np.load(shard, mmap_mode="r+")
    arr[int(data.images.loc[2, 1]), 3, 3] ^= 0x0040  # a bit flip on disk
    arr.flush()
    del arr
    with pytest.warns(RuntimeWarning, match="damaged; decoded .* again"):
        x = torch.cat([b for b in BatchReader(data.images, workers=0).sequential(4)])
    assert torch.equal(x, good)  # training sees the same bits
    again = scan_site(export, PreprocessConfig(image_size=16), tmp_path / "cache")
    for rec in again.usable:
        again.load_image(rec)
    assert again.cache.decoded == 1  # the bad row was forgotten, and is rewritten by the next scan


def test_a_damaged_row_without_its_dicom_file_is_a_clear_error(tmp_path: Path) -> None:
    packed, _ = _packed_site(tmp_path / "cache", n=3)
    (shard,) = (tmp_path / "cache" / "packs").rglob("*.npy")
    shard.write_bytes(shard.read_bytes()[:200])  # truncated under a running job
    with pytest.raises(CorruptPackError, match="delete the cache folder"):
        packed[1]


def test_an_unwritable_cache_trains_from_memory_with_the_same_images(tmp_path: Path) -> None:
    export = _export(tmp_path / "export" / "dicom", 4)
    first = scan_site(export, PreprocessConfig(image_size=16), tmp_path / "cache")
    labels = tmp_path / "export" / "labels.csv"
    labels.write_text("SOPInstanceUID,label\n" + "".join(f"{r.header.sop_instance_uid},normal\n" for r in first.usable))
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    with pytest.warns(RuntimeWarning, match="not writable"):
        cfg = SiteDataConfig(data=export, labels=labels, image_size=16, cache_dir=blocker / "cache")
        in_memory, _ = load_site_dataset(cfg)
    on_disk, _ = load_site_dataset(
        SiteDataConfig(data=export, labels=labels, image_size=16, cache_dir=tmp_path / "cache")
    )
    assert in_memory.images.shards == () and len(in_memory.images.memory) == 4
    assert torch.equal(to_tensor(in_memory.images), to_tensor(on_disk.images))
