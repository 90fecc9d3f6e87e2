"""Tests of qnnrun.data: data set readers, the whole-batch loader, augmentation, configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra_utils import compose_config
from omegaconf import OmegaConf
from PIL import Image

import qnnrun.data.sources as sources
from qnnrun.data import (
    DataInfo,
    TensorLoader,
    build_data,
    crop_at,
    crop_offsets,
    dataset_info,
    flip_mask,
    random_crop,
    random_hflip,
)
from qnnrun.errors import QnnrunError

CONF = Path(__file__).resolve().parents[2] / "conf" / "dataset"


def dataset_cfg(name: str, **overrides):
    return OmegaConf.merge(compose_config([f"dataset={name}"]).dataset, overrides)


def build(name: str, tmp_path: Path, data_dir: Path | None = None, **overrides):
    return build_data(
        dataset_cfg(name, **overrides),
        data_dir=data_dir or tmp_path,
        cache_dir=tmp_path / "cache",
        device="cpu",
        seed=0,
    )


def epoch_batches(loader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return list(loader)


def make_loader(n: int = 103, batch_size: int = 10, **kwargs) -> TensorLoader:
    """A loader whose labels are the sample indices and whose pixels are random bytes."""
    images = torch.randint(0, 256, (n, 3, 6, 6), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    options = dict(batch_size=batch_size, mean=[0.0] * 3, std=[1.0] * 3, device="cpu", seed=0, shuffle=True)
    return TensorLoader(images, torch.arange(n), **(options | kwargs))


# --- digits -----------------------------------------------------------------------------------


def test_digits_sizes_stratified_and_deterministic(tmp_path):
    bundle = build("digits", tmp_path)
    assert bundle.info == DataInfo("digits", 1, 8, 10, 1437, 360)
    assert dataset_info(dataset_cfg("digits")) == bundle.info
    train_counts = torch.bincount(bundle.train.labels, minlength=10)
    test_counts = torch.bincount(bundle.test.labels, minlength=10)
    # Stratified: every class is split 80/20 up to rounding.
    assert ((test_counts.float() - 0.2 * (train_counts + test_counts)).abs() <= 1).all()
    again = build("digits", tmp_path)
    assert torch.equal(again.train.images, bundle.train.images)
    assert torch.equal(again.test.labels, bundle.test.labels)


def test_digits_pixels_rescaled_from_sklearn():
    from sklearn.datasets import load_digits

    train, test = sources.load_digits_splits()
    assert train.images.dtype == torch.uint8 and train.images.shape == (1437, 1, 8, 8)
    assert test.images.shape == (360, 1, 8, 8) and test.labels.dtype == torch.int64
    x = load_digits().data
    every = {tuple(row) for row in np.rint(x * 255 / 16).astype(np.uint8)}
    assert all(tuple(img.flatten().tolist()) in every for img in test.images[:20])
    assert int(train.images.max()) == 255


def test_digits_batches_shapes_and_normalization(tmp_path):
    bundle = build("digits", tmp_path)
    images, labels = next(iter(bundle.train))
    assert images.shape == (64, 1, 8, 8) and images.dtype == torch.float32 and images.device.type == "cpu"
    assert labels.shape == (64,) and labels.dtype == torch.int64 and labels.device.type == "cpu"
    assert len(bundle.train) == 23 and len(bundle.test) == 1
    (test_images, test_labels), = list(bundle.test)
    expected = (bundle.test.images.float() / 255 - 0.3054) / 0.3760
    torch.testing.assert_close(test_images, expected)
    assert torch.equal(test_labels, bundle.test.labels)
    all_train = torch.cat([x for x, _ in bundle.train])
    assert abs(all_train.mean().item()) < 0.01 and abs(all_train.std().item() - 1) < 0.01


# --- TensorLoader -----------------------------------------------------------------------------


def test_loader_covers_every_sample_once_shuffled():
    loader = make_loader()
    assert len(loader) == 11 and loader.num_samples == 103 and loader.batch_size == 10
    batches = epoch_batches(loader, 0)
    assert [len(y) for _, y in batches] == [10] * 10 + [3]
    seen = torch.cat([y for _, y in batches])
    assert torch.equal(seen.sort().values, torch.arange(103))
    assert not torch.equal(seen, torch.arange(103))
    for images, labels in batches:  # each image travels with its own label
        torch.testing.assert_close(images, loader.images[labels].float() / 255)


def test_loader_drop_last():
    loader = make_loader(drop_last=True)
    seen = torch.cat([y for _, y in epoch_batches(loader, 0)])
    assert len(loader) == 10 and len(seen) == 100 and len(seen.unique()) == 100


def test_loader_epochs_reproducible_and_independent_of_global_rng():
    loader = make_loader(augment=True, crop_padding=2, hflip=True)
    torch.manual_seed(123)
    first = epoch_batches(loader, 3)
    torch.manual_seed(456)
    epoch_batches(loader, 4)
    replay = epoch_batches(make_loader(augment=True, crop_padding=2, hflip=True), 3)
    for (x1, y1), (x2, y2) in zip(first, replay, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    other = torch.cat([y for _, y in epoch_batches(loader, 4)])
    assert not torch.equal(torch.cat([y for _, y in first]), other)
    other_seed = torch.cat([y for _, y in epoch_batches(make_loader(seed=1), 3)])
    assert not torch.equal(torch.cat([y for _, y in first]), other_seed)


def test_loader_without_shuffle_keeps_order():
    loader = make_loader(shuffle=False)
    assert torch.equal(torch.cat([y for _, y in epoch_batches(loader, 5)]), torch.arange(103))


# --- augmentation -----------------------------------------------------------------------------


def test_crop_at_matches_per_sample_slices():
    padded = torch.randn(7, 2, 9, 10)
    dy = torch.tensor([0, 1, 2, 3, 4, 0, 4])
    dx = torch.tensor([0, 4, 1, 3, 2, 4, 0])
    out = crop_at(padded, dy, dx, (5, 6))
    reference = torch.stack([padded[i, :, dy[i] : dy[i] + 5, dx[i] : dx[i] + 6] for i in range(7)])
    assert torch.equal(out, reference)


def test_random_crop_is_a_zero_padded_crop_at_drawn_offsets():
    batch = torch.randint(1, 256, (32, 3, 8, 8), dtype=torch.uint8)
    out = random_crop(batch, 3, torch.Generator().manual_seed(7))
    dy, dx = crop_offsets(32, 3, torch.Generator().manual_seed(7))
    assert out.shape == batch.shape and out.dtype == torch.uint8
    assert dy.min() >= 0 and dy.max() <= 6 and len(set(zip(dy.tolist(), dx.tolist()))) > 1
    for i in range(32):
        canvas = torch.zeros(3, 14, 14, dtype=torch.uint8)
        canvas[:, 3:11, 3:11] = batch[i]
        assert torch.equal(out[i], canvas[:, dy[i] : dy[i] + 8, dx[i] : dx[i] + 8])


def test_random_hflip_flips_exactly_the_drawn_samples():
    batch = torch.randn(64, 2, 4, 5)
    out = random_hflip(batch, torch.Generator().manual_seed(3))
    mask = flip_mask(64, torch.Generator().manual_seed(3))
    assert 0 < int(mask.sum()) < 64
    for i in range(64):
        assert torch.equal(out[i], batch[i].flip(-1) if mask[i] else batch[i])


def test_loader_augments_each_sample_by_some_crop_and_flip():
    padding = 2
    loader = make_loader(n=40, batch_size=40, shuffle=False, augment=True, crop_padding=padding, hflip=True)
    (images, labels), = epoch_batches(loader, 0)
    augmented = (images * 255).round().to(torch.uint8)
    padded = torch.nn.functional.pad(loader.images, (padding,) * 4)
    used = set()
    for out, i in zip(augmented, labels.tolist(), strict=True):
        matches = [
            (dy, dx, flip)
            for dy in range(2 * padding + 1)
            for dx in range(2 * padding + 1)
            for flip in (False, True)
            if torch.equal(out, (lambda c: c.flip(-1) if flip else c)(padded[i, :, dy : dy + 6, dx : dx + 6]))
        ]
        assert len(matches) == 1
        used.add(matches[0])
    assert len(used) > 10 and {flip for *_, flip in used} == {False, True}


def test_test_loader_is_never_augmented(tmp_path):
    bundle = build("digits", tmp_path, augment=True, crop_padding=2, hflip=True)
    plain = build("digits", tmp_path)
    for (x1, y1), (x2, y2) in zip(bundle.test, plain.test, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    (x1, y1), (x2, y2) = next(iter(bundle.train)), next(iter(plain.train))
    assert torch.equal(y1, y2) and not torch.equal(x1, x2)  # same order, augmented pixels


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_equal_cpu_batches():
    cpu = make_loader(augment=True, crop_padding=2, hflip=True)
    cuda = make_loader(augment=True, crop_padding=2, hflip=True, device="cuda")
    for (xc, yc), (xg, yg) in zip(epoch_batches(cpu, 2), epoch_batches(cuda, 2), strict=True):
        assert xg.device.type == "cuda" and yg.device.type == "cuda"
        torch.testing.assert_close(xg.cpu(), xc)
        assert torch.equal(yg.cpu(), yc)


# --- configs and errors -----------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(CONF.glob("*.yaml")), ids=lambda p: p.stem)
def test_dataset_info_for_every_config(path):
    cfg = dataset_cfg(path.stem)
    info = dataset_info(cfg)
    assert info.name == path.stem
    assert (info.in_channels, info.image_size, info.num_classes) == (cfg.in_channels, cfg.image_size, cfg.num_classes)
    assert len(cfg.mean) == len(cfg.std) == info.in_channels


def test_every_small_set_has_a_config():
    stems = {p.stem for p in CONF.glob("*.yaml")}
    assert stems == {"digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "imagefolder"}


def test_unknown_dataset_names_the_valid_ones(tmp_path):
    with pytest.raises(QnnrunError, match="valid names: digits, mnist"):
        build_data({"name": "svhn"}, data_dir=tmp_path, cache_dir=tmp_path, device="cpu", seed=0)


@pytest.mark.parametrize(
    ("name", "paths"),
    [
        ("mnist", ["MNIST/raw"]),
        ("fashion_mnist", ["FashionMNIST/raw"]),
        ("cifar10", ["cifar-10-batches-py", "cifar10-jpg"]),
        ("cifar100", ["cifar-100-python"]),
    ],
)
def test_missing_data_is_a_one_line_error_naming_the_paths(tmp_path, name, paths):
    with pytest.raises(QnnrunError) as caught:
        build(name, tmp_path)
    message = str(caught.value)
    assert "\n" not in message and "paths.data_dir" in message
    for path in paths:
        assert str(tmp_path / path) in message


def test_dataset_config_mismatch_is_reported(tmp_path):
    with pytest.raises(QnnrunError, match="dataset.image_size=28 but digits has 8"):
        build("digits", tmp_path, image_size=28)


# --- real data sets from ../shared/data ---------------------------------------------------------


def test_mnist_torchvision_layout(mnist_dir, tmp_path):
    bundle = build("mnist", tmp_path, data_dir=mnist_dir)
    assert bundle.info == DataInfo("mnist", 1, 28, 10, 60000, 10000)
    assert bundle.train.images.shape == (60000, 1, 28, 28) and bundle.train.images.dtype == torch.uint8
    assert int(bundle.train.labels[0]) == 5 and int(bundle.test.labels[0]) == 7
    images, labels = next(iter(bundle.train))
    assert images.shape == (128, 1, 28, 28) and labels.dtype == torch.int64


def test_cifar10_jpeg_tree_decoded_once_then_cached(cifar10_jpg_dir, tmp_path, monkeypatch):
    bundle = build("cifar10", tmp_path, data_dir=cifar10_jpg_dir)
    assert bundle.info == DataInfo("cifar10", 3, 32, 10, 50000, 10000)
    assert bundle.train.images.shape == (50000, 3, 32, 32) and bundle.train.images.dtype == torch.uint8
    assert torch.equal(torch.bincount(bundle.test.labels), torch.full((10,), 1000))
    cache = tmp_path / "cache"
    assert sorted(p.name for p in cache.iterdir()) == ["cifar10-jpg-test.pt", "cifar10-jpg-train.pt"]

    def no_decoding(*args, **kwargs):
        raise AssertionError("second load decoded JPEGs instead of reading the cache")

    monkeypatch.setattr(sources, "decode_jpeg", no_decoding)
    again = build("cifar10", tmp_path, data_dir=cifar10_jpg_dir)
    assert torch.equal(again.train.images, bundle.train.images)
    assert torch.equal(again.test.labels, bundle.test.labels)
    images, labels = next(iter(again.train))
    assert images.shape == (128, 3, 32, 32) and images.dtype == torch.float32


# --- imagefolder --------------------------------------------------------------------------------


def write_imagefolder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", 5), ("val", 3)):
        for label in ("cat", "dog"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.{'png' if i % 2 else 'jpg'}")


def test_imagefolder_tree_loads(tmp_path):
    write_imagefolder(tmp_path / "tiny")
    bundle = build("imagefolder", tmp_path, root="tiny", image_size=16, batch_size=4, eval_batch_size=4, num_workers=0)
    assert bundle.info == DataInfo("imagefolder", 3, 16, 2, 10, 6)
    assert len(bundle.train) == 3 and bundle.train.num_samples == 10 and bundle.train.batch_size == 4
    images, labels = next(iter(bundle.train))
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.float32
    assert labels.dtype == torch.int64
    val_labels = torch.cat([y for _, y in bundle.test])
    assert val_labels.tolist() == [0, 0, 0, 1, 1, 1]
    bundle.train.set_epoch(1)
    order = [torch.cat([y for _, y in bundle.train]) for _ in range(2)]
    assert torch.equal(order[0], order[1])


def test_imagefolder_needs_a_root(tmp_path):
    with pytest.raises(QnnrunError, match="dataset.root is required"):
        build("imagefolder", tmp_path)
    with pytest.raises(QnnrunError, match=str(tmp_path / "absent" / "train")):
        build("imagefolder", tmp_path, root=str(tmp_path / "absent"))


# --- bad image files --------------------------------------------------------------------------


def write_jpeg_tree(root: Path, bad: dict[str, bytes | tuple[int, int]]) -> None:
    """A tiny cifar10-jpg tree (10 classes x 2 images of 32x32, per split) plus ``bad`` files:
    raw bytes, or a (height, width) for a wrong-sized JPEG, under train/class0/<name>."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in range(10):
            folder = root / "cifar10-jpg" / split / f"class{label}"
            folder.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    for name, content in bad.items():
        path = root / "cifar10-jpg" / "train" / "class0" / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            Image.fromarray(rng.integers(0, 256, (*content, 3), dtype=np.uint8)).save(path)


@pytest.mark.parametrize("content, reason", [(b"", "not a readable JPEG"), (b"\xff\xd8garbage", "not a readable JPEG"),
                                             ((40, 32), "size (3, 40, 32) differs from the others' (3, 32, 32)")])
def test_bad_jpeg_file_is_named_or_skipped_and_counted(tmp_path, content, reason, caplog):
    write_jpeg_tree(tmp_path / "data", {"bad.jpg": content})
    bad_file = tmp_path / "data" / "cifar10-jpg" / "train" / "class0" / "bad.jpg"
    with pytest.raises(QnnrunError) as error:
        build("cifar10", tmp_path, data_dir=tmp_path / "data")
    message = str(error.value)
    assert message.startswith(f"bad image file {bad_file}: {reason}") and "dataset.skip_bad=true" in message
    assert "\n" not in message
    with caplog.at_level("WARNING", logger="qnnrun"):
        bundle = build("cifar10", tmp_path, data_dir=tmp_path / "data", skip_bad=True)
    assert bundle.info.train_size == 20 and bundle.train.images.shape == (20, 3, 32, 32)
    assert "skipped 1 bad image file(s)" in caplog.text and str(bad_file) in caplog.text
    # The cache remembers the bad file: without skip_bad it is still an error, not silently skipped.
    with pytest.raises(QnnrunError, match="bad image file"):
        build("cifar10", tmp_path, data_dir=tmp_path / "data")


def test_bad_files_in_a_streamed_imagefolder_are_named_or_skipped(tmp_path, caplog):
    write_imagefolder(tmp_path / "tiny")
    broken = tmp_path / "tiny" / "train" / "dog" / "9.jpg"
    broken.write_bytes(b"not an image")
    options = dict(root="tiny", image_size=16, batch_size=4, eval_batch_size=4)
    for workers in (0, 2):
        bundle = build("imagefolder", tmp_path, num_workers=workers, **options)
        with pytest.raises(QnnrunError, match=f"bad image file {broken}: unreadable image"):
            list(bundle.train)
    bundle = build("imagefolder", tmp_path, num_workers=0, skip_bad=True, **options)
    with caplog.at_level("WARNING", logger="qnnrun"):
        labels = torch.cat([y for _, y in bundle.train])
    assert len(labels) == 10 and "skipped 1 bad image file(s)" in caplog.text


# --- shards of one run on several processes ----------------------------------------------------


def test_shards_of_a_tensor_loader_make_up_its_global_batches():
    whole = make_loader(n=106, batch_size=10, augment=True, crop_padding=2, hflip=True)
    shards = [make_loader(n=106, batch_size=10, augment=True, crop_padding=2, hflip=True) for _ in range(3)]
    for rank, shard in enumerate(shards):
        shard.shard(rank, 3)
        assert len(shard) == len(whole) == 11  # the final batch of 6 gives every rank 2
    for parts in zip(*(epoch_batches(s, 4) for s in shards), epoch_batches(whole, 4), strict=True):
        *ranks, (images, labels) = parts
        assert [len(y) for _, y in ranks] == [len(t) for t in labels.tensor_split(3)]
        assert torch.equal(torch.cat([x for x, _ in ranks]), images)  # same samples and augmentation
        assert torch.equal(torch.cat([y for _, y in ranks]), labels)


def test_a_sharded_training_loader_drops_a_final_batch_too_short_for_every_rank():
    loader = make_loader(n=103, batch_size=10)  # shuffled: a training loader; final batch of 3
    assert len(loader) == 11
    loader.shard(0, 2)  # 3 samples cannot give 2 ranks 2 each
    assert len(loader) == 10 and len(epoch_batches(loader, 0)) == 10
    single = make_loader(n=101, batch_size=10)  # a final batch of 1 breaks BatchNorm even alone
    assert len(single) == 10


def test_shards_of_an_imagefolder_read_their_share_of_each_global_batch(tmp_path):
    write_imagefolder(tmp_path / "tiny")
    options = dict(root="tiny", image_size=16, batch_size=5, eval_batch_size=3, num_workers=0, augment=False)
    whole = build("imagefolder", tmp_path, **options)
    shards = [build("imagefolder", tmp_path, **options) for _ in range(2)]
    for rank, bundle in enumerate(shards):
        bundle.train.shard(rank, 2)
        bundle.test.shard(rank, 2)
    for loader in ("train", "test"):
        batches = [list(getattr(b, loader)) for b in (whole, *shards)]
        assert len(batches[0]) == len(batches[1]) == len(batches[2])
        for (x, y), (x0, y0), (x1, y1) in zip(*batches, strict=True):
            assert torch.equal(torch.cat([y0, y1]), y) and torch.equal(torch.cat([x0, x1]), x)
            assert abs(len(y0) - len(y1)) <= 1
