"""Tests for vqkit.data: every loader on fixtures written here (plus the real Fashion-MNIST if installed)."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from vqkit.data import (
    DatasetFormatError,
    DatasetNotFoundError,
    ImageDataset,
    available_datasets,
    load_dataset,
    read_idx,
    register_dataset,
    safe_load,
    stratified_split,
)
from vqkit.data import registry as registry_module

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VQKIT_DATA", raising=False)


# --------------------------------------------------------------------------------------------- ImageDataset
def _tiny_dataset(n: int = 7) -> ImageDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 4, 5), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % 3
    return ImageDataset(images, labels, num_classes=3, name="tiny")


def test_get_batch_equals_stacked_getitem() -> None:
    ds = _tiny_dataset()
    idx = torch.tensor([4, 0, 6, 4, -1])
    x, y = ds.get_batch(idx)
    items = [ds[int(i)] for i in idx]
    assert x.dtype == torch.float32 and x.shape == (5, 3, 4, 5)
    assert y.dtype == torch.int64
    assert torch.equal(x, torch.stack([im for im, _ in items]))
    assert torch.equal(y, torch.tensor([lab for _, lab in items]))
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    x2, y2 = ds.get_batch([4, 0, 6, 4, 6], device="cpu")
    assert torch.equal(x2, x) and torch.equal(y2, y)


def test_get_batch_rejects_bad_indices() -> None:
    ds = _tiny_dataset()
    with pytest.raises(IndexError, match="idx"):
        ds.get_batch(torch.tensor([0, 7]))
    with pytest.raises(TypeError, match="idx"):
        ds.get_batch(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="idx"):
        ds.get_batch(torch.zeros(2, 2, dtype=torch.long))
    x, y = ds.get_batch(torch.empty(0, dtype=torch.long))
    assert x.shape == (0, 3, 4, 5) and y.shape == (0,)


def test_works_with_dataloader_and_distributed_sampler() -> None:
    ds = _tiny_dataset(10)
    x, y = next(iter(DataLoader(ds, batch_size=10, shuffle=False)))
    xb, yb = ds.get_batch(torch.arange(10))
    assert torch.equal(x, xb) and torch.equal(y, yb)
    sampler = DistributedSampler(ds, num_replicas=2, rank=1, shuffle=False)
    seen = torch.cat([lab for _, lab in DataLoader(ds, batch_size=3, sampler=sampler)])
    assert torch.equal(seen, ds.labels[1::2])


def test_image_dataset_validates_inputs() -> None:
    images = torch.zeros(2, 1, 3, 3, dtype=torch.uint8)
    with pytest.raises(TypeError, match="images.*uint8.*float32"):
        ImageDataset(images.float(), torch.zeros(2), 2, "x")
    with pytest.raises(ValueError, match=r"images.*\(N, C, H, W\)"):
        ImageDataset(images[0], torch.zeros(1, dtype=torch.long), 2, "x")
    with pytest.raises(ValueError, match=r"labels.*\(2,\)"):
        ImageDataset(images, torch.zeros(3, dtype=torch.long), 2, "x")
    with pytest.raises(ValueError, match=r"labels.*\[0, 2\)"):
        ImageDataset(images, torch.tensor([0, 2]), 2, "x")
    with pytest.raises(ValueError, match="num_classes"):
        ImageDataset(images, torch.tensor([0, 0]), 0, "x")
    ds = ImageDataset(images.numpy(), np.array([0, 1], dtype=np.uint8), 2, "x")
    assert ds.labels.dtype == torch.int64 and ds.image_shape == (1, 3, 3)


# --------------------------------------------------------------------------------------------- digits
def test_digits_split_sizes_dtype_and_range() -> None:
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert (len(train), len(test)) == (1437, 360)
    for ds in (train, test):
        assert ds.images.dtype == torch.uint8 and ds.images.shape[1:] == (1, 8, 8)
        assert ds.labels.dtype == torch.int64 and ds.num_classes == 10
        x, _ = ds.get_batch(torch.arange(len(ds)))
        assert x.dtype == torch.float32 and float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.bincount(test.labels, minlength=10).tolist() == [36, 37, 35, 37, 36, 36, 36, 36, 35, 36]


def test_digits_pixel_scaling_is_exact_and_split_partitions_the_data() -> None:
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    bunch = sklearn_datasets.load_digits()
    values = bunch.data.astype(np.int64)
    expected = (values * 255 + 8) // 16
    assert expected.max() == 255 and ((8 * 255 + 8) // 16) == 128
    train_idx, test_idx = stratified_split(bunch.target, 0.2, 0)
    assert set(train_idx.tolist()).isdisjoint(test_idx.tolist())
    assert sorted(train_idx.tolist() + test_idx.tolist()) == list(range(1797))
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert np.array_equal(train.images.reshape(-1, 64).numpy(), expected[train_idx])
    assert np.array_equal(test.images.reshape(-1, 64).numpy(), expected[test_idx])
    assert np.array_equal(test.labels.numpy(), bunch.target[test_idx])


def test_digits_split_is_deterministic_and_frozen() -> None:
    a, b = load_dataset("digits", "test"), load_dataset("digits", "test")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    labels = np.repeat(np.arange(10), 180)[:1797]
    assert np.array_equal(stratified_split(labels, 0.2, 0)[1], stratified_split(labels, 0.2, 0)[1])
    # The published split must never change (RandomState's stream is frozen by NumPy).
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    _, test_idx = stratified_split(sklearn_datasets.load_digits().target, 0.2, 0)
    assert test_idx[:8].tolist() == [3, 7, 13, 19, 36, 38, 43, 48] and int(test_idx.sum()) == 313341


# --------------------------------------------------------------------------------------------- IDX
def _idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    dtype = {0x08: ">u1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4"}[type_code]
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(dtype).tobytes()


def _write(path: Path, data: bytes, gz: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def _write_idx_dataset(directory: Path, gz: bool, n_train: int = 6, n_test: int = 4) -> dict[str, tuple]:
    rng = np.random.default_rng(0)
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        _write(directory / f"{prefix}-images-idx3-ubyte", _idx_bytes(images), gz)
        _write(directory / f"{prefix}-labels-idx1-ubyte", _idx_bytes(labels), gz)
        out[split] = (images, labels)
    return out


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_datasets_load_raw_and_gz(tmp_path: Path, gz: bool, name: str) -> None:
    truth = _write_idx_dataset(tmp_path, gz)
    for split in ("train", "test"):
        ds = load_dataset(name, split, root=tmp_path)
        images, labels = truth[split]
        assert ds.images.shape == (len(images), 1, 28, 28) and ds.num_classes == 10
        assert np.array_equal(ds.images[:, 0].numpy(), images)
        assert np.array_equal(ds.labels.numpy(), labels.astype(np.int64))
        assert ds.name == f"{name}/{split}"


def test_idx_found_in_subfolder_and_via_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_idx_dataset(tmp_path / "MNIST" / "raw", gz=True)  # torchvision's layout
    assert len(load_dataset("mnist", root=tmp_path)) == 6
    monkeypatch.setenv("VQKIT_DATA", str(tmp_path))
    assert len(load_dataset("mnist", "test")) == 4


def test_read_idx_other_types_roundtrip(tmp_path: Path) -> None:
    a = np.arange(-6, 6, dtype=np.int32).reshape(3, 4) * 1000
    (tmp_path / "a.idx").write_bytes(_idx_bytes(a, 0x0C))
    b = read_idx(tmp_path / "a.idx")
    assert b.dtype == np.int32 and b.dtype.isnative and np.array_equal(a, b)


def test_read_idx_corrupt_files_give_clear_errors(tmp_path: Path) -> None:
    good = _idx_bytes(np.zeros((3, 28, 28), dtype=np.uint8))
    cases = {
        "truncated": (good[:-10], "truncated IDX file"),
        "trailing": (good + b"\0", "trailing bytes"),
        "magic": (b"\x01\x02" + good[2:], "not an IDX file"),
        "dtype": (b"\0\0\x42\x03" + good[4:], "unknown IDX data type 0x42"),
        "header": (good[:9], "truncated IDX header"),
        "badgz": (gzip.compress(good)[:-30], "corrupt or truncated gzip"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(DatasetFormatError, match=message) as info:
            read_idx(path)
        assert str(path) in str(info.value)


def test_idx_dataset_with_truncated_file_and_mismatched_counts(tmp_path: Path) -> None:
    _write_idx_dataset(tmp_path, gz=False)
    images = tmp_path / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-1])
    with pytest.raises(DatasetFormatError, match="truncated"):
        load_dataset("mnist", root=tmp_path)
    _write(tmp_path / "t10k-labels-idx1-ubyte", _idx_bytes(np.zeros(5, dtype=np.uint8)), gz=False)
    with pytest.raises(DatasetFormatError, match="5 labels.*4 images"):
        load_dataset("mnist", "test", root=tmp_path)


# --------------------------------------------------------------------------------------------- CIFAR
def _cifar_batch(n: int, label_key: str, num_classes: int, seed: int) -> tuple[dict, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = rng.integers(0, num_classes, n).tolist()
    # bytes keys, like the original Python-2 pickles
    return {b"batch_label": b"x", b"data": data, label_key.encode(): labels, b"filenames": [b"a.png"] * n}, data, labels


def _dump(obj: object, path: Path, protocol: int = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def test_cifar10_loads_from_parent_or_folder(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    train_data, train_labels = [], []
    for i in range(1, 6):
        batch, data, labels = _cifar_batch(2, "labels", 10, seed=i)
        _dump(batch, folder / f"data_batch_{i}", protocol=2 if i % 2 else 5)
        train_data.append(data)
        train_labels += labels
    batch, test_data, test_labels = _cifar_batch(3, "labels", 10, seed=0)
    _dump(batch, folder / "test_batch")
    for root in (tmp_path, folder):
        train = load_dataset("cifar10", "train", root=root)
        assert train.images.shape == (10, 3, 32, 32) and train.num_classes == 10
        assert np.array_equal(train.images.reshape(10, -1).numpy(), np.concatenate(train_data))
        assert train.labels.tolist() == train_labels
        assert train.class_names is not None and train.class_names[0] == "airplane"
    test = load_dataset("cifar10", "test", root=tmp_path)
    assert test.images.shape == (3, 3, 32, 32) and test.labels.tolist() == test_labels
    # channel-major rows: the first 1024 values are the red plane
    assert np.array_equal(test.images[0, 0].numpy().ravel(), test_data[0, :1024])


def test_cifar100_uses_fine_labels_and_meta(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    truth = {}
    for split, n in (("train", 4), ("test", 2)):
        batch, data, labels = _cifar_batch(n, "fine_labels", 100, seed=n)
        batch[b"coarse_labels"] = [0] * n
        _dump(batch, folder / split)
        truth[split] = (data, labels)
    _dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, folder / "meta")
    ds = load_dataset("cifar100", "train", root=tmp_path)
    assert ds.images.shape == (4, 3, 32, 32) and ds.num_classes == 100
    assert ds.labels.tolist() == truth["train"][1]
    assert np.array_equal(ds.images.reshape(4, -1).numpy(), truth["train"][0])
    assert ds.class_names is not None and ds.class_names[99] == "c99"
    assert len(load_dataset("cifar100", "test", root=folder)) == 2


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.mkdir, (str(self.marker),))


def test_pickle_with_disallowed_global_is_rejected(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar-10-batches-py"
    batch, _, _ = _cifar_batch(2, "labels", 10, seed=0)
    batch[b"labels"] = _Evil(marker)
    _dump(batch, folder / "test_batch")
    with pytest.raises(pickle.UnpicklingError, match="posix.mkdir|nt.mkdir|not allowed"):
        load_dataset("cifar10", "test", root=tmp_path)
    assert not marker.exists()
    _dump({"x": _tiny_dataset}, tmp_path / "fn.pkl")  # a plain function global is refused too
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        safe_load(tmp_path / "fn.pkl")


def test_cifar_bad_contents_give_format_errors(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    _dump({b"data": np.zeros((2, 100), dtype=np.uint8), b"labels": [0, 1]}, folder / "test_batch")
    with pytest.raises(DatasetFormatError, match=r"uint8 array \(n, 3072\)"):
        load_dataset("cifar10", "test", root=tmp_path)
    _dump({b"data": np.zeros((2, 3072), dtype=np.uint8)}, folder / "test_batch")
    with pytest.raises(DatasetFormatError, match="missing key 'labels'"):
        load_dataset("cifar10", "test", root=tmp_path)


# --------------------------------------------------------------------------------------------- image folder
def _write_pngs(root: Path, classes: dict[str, int], size_hw: tuple[int, int] = (6, 5), mode: str = "RGB") -> None:
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for c, n in classes.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shape = size_hw + ((3,) if mode == "RGB" else ())
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / c / f"{i:02d}.png")


def test_image_folder_fixed_split_and_pixels(tmp_path: Path) -> None:
    _write_pngs(tmp_path, {"cat": 5, "dog": 5})
    (tmp_path / "notes.txt").write_text("ignored")
    train = load_dataset("imagefolder", "train", root=tmp_path)
    test = load_dataset("imagefolder", "test", root=tmp_path)
    assert (len(train), len(test)) == (8, 2)
    assert train.images.shape[1:] == (3, 6, 5) and train.num_classes == 2
    assert train.class_names == ("cat", "dog") and sorted(test.labels.tolist()) == [0, 1]
    again = load_dataset("imagefolder", "test", root=tmp_path)
    assert torch.equal(again.images, test.images)
    from PIL import Image

    first = np.asarray(Image.open(tmp_path / "cat" / "00.png"))  # lossless PNG: exact pixels
    all_images = torch.cat([train.images, test.images]).permute(0, 2, 3, 1).numpy()
    assert any(np.array_equal(first, im) for im in all_images)


def test_image_folder_resize_channels_and_train_test_dirs(tmp_path: Path) -> None:
    _write_pngs(tmp_path / "train", {"a": 3, "b": 2}, mode="L")
    _write_pngs(tmp_path / "test", {"b": 2})
    train = load_dataset("imagefolder", "train", root=tmp_path)
    assert train.images.shape == (5, 1, 6, 5)  # grayscale inferred from the first train image
    test = load_dataset("imagefolder", "test", root=tmp_path, image_size=4, channels=3)
    assert test.images.shape == (2, 3, 4, 4) and test.labels.tolist() == [1, 1] and test.num_classes == 2
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("imagefolder", "train", root=tmp_path, image_size=(4, 0))
    with pytest.raises(ValueError, match="channels"):
        load_dataset("imagefolder", "train", root=tmp_path, channels=2)


def test_image_folder_size_mismatch_and_bad_file(tmp_path: Path) -> None:
    _write_pngs(tmp_path, {"a": 4})
    _write_pngs(tmp_path, {"b": 1}, size_hw=(7, 7))
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("imagefolder", "train", root=tmp_path)
    assert load_dataset("imagefolder", "train", root=tmp_path, image_size=(3, 3)).images.shape[2:] == (3, 3)
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DatasetFormatError, match="broken.png"):
        for split in ("train", "test"):
            load_dataset("imagefolder", split, root=tmp_path, image_size=(3, 3))


# --------------------------------------------------------------------------------------------- missing data
def test_missing_fashion_mnist_says_where_and_how(tmp_path: Path) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("fashion-mnist", "train", root=root)
    message = str(info.value)
    assert str(root) in message and str(root / "fashion-mnist") in message
    assert "apt-get install dataset-fashion-mnist" in message and "train-images-idx3-ubyte" in message
    assert isinstance(info.value, DatasetNotFoundError) and str(root) in info.value.tried


def test_missing_mnist_and_cifar_say_where_and_how(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match="VQKIT_DATA") as info:
        load_dataset("mnist")
    assert "t10k-images-idx3-ubyte" in str(info.value) and "root=" in str(info.value)
    monkeypatch.setenv("VQKIT_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("mnist", "test")
    assert str(tmp_path / "mnist") in str(info.value)
    for name, archive, folder in (
        ("cifar10", "cifar-10-python.tar.gz", "cifar-10-batches-py"),
        ("cifar100", "cifar-100-python.tar.gz", "cifar-100-python"),
    ):
        with pytest.raises(FileNotFoundError) as info:
            load_dataset(name, root=tmp_path / "data")
        message = str(info.value)
        assert archive in message and str(tmp_path / "data" / folder) in message
    with pytest.raises(FileNotFoundError, match="class_name"):
        load_dataset("imagefolder", root=tmp_path / "missing")
    with pytest.raises(ValueError, match="root"):
        load_dataset("imagefolder")


# --------------------------------------------------------------------------------------------- registry
def test_registry_names_errors_and_custom_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    assert {"digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "imagefolder"} <= set(available_datasets())
    with pytest.raises(ValueError, match="unknown dataset 'nope'.*cifar10.*digits.*fashion-mnist"):
        load_dataset("nope")
    with pytest.raises(ValueError, match="split"):
        load_dataset("digits", "valid")
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))

    @register_dataset("Tiny_Set")
    def _load_tiny(split: str, root: object = None, n: int = 7) -> ImageDataset:
        return _tiny_dataset(n)

    assert len(load_dataset("tiny-set", "test", n=4)) == 4
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("tiny_set", _load_tiny)
    register_dataset("tiny-set", _load_tiny, overwrite=True)


# --------------------------------------------------------------------------------------------- real data
@pytest.mark.skipif(
    not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists(), reason="dataset-fashion-mnist not installed"
)
def test_real_fashion_mnist() -> None:
    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.num_classes == test.num_classes == 10
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    x, y = train.get_batch(torch.tensor([0, 59999]))
    assert x.shape == (2, 1, 28, 28) and float(x.max()) <= 1.0 and y.dtype == torch.int64


def test_safe_load_accepts_numpy1_module_names(tmp_path: Path) -> None:
    """The real CIFAR pickles name ``numpy.core.multiarray`` (NumPy 1.x era), not ``numpy._core``."""
    data = np.arange(3072 * 2, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    raw = pickle.dumps({b"data": data, b"labels": [1, 2]}, protocol=2)
    raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in raw
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.parent.mkdir()
    path.write_bytes(raw)
    ds = load_dataset("cifar10", "test", root=tmp_path)
    assert np.array_equal(ds.images.reshape(2, -1).numpy(), data) and ds.labels.tolist() == [1, 2]
