"""Datasets: exact reads of every on-disk format, the validation split, augmentation, and the resumable,
sharded batch iterator."""
import gzip
import pickle
from pathlib import Path

import pytest
import torch
from fake_data import write_cifar10, write_cifar100, write_fashion_mnist, write_imagefolder, write_svhn

from robust_sabn.cli.bench.data import crops_one_by_one
from robust_sabn.data import DATASETS, ImageTensors, load_dataset, random_crop_flip
from robust_sabn.errors import ConfigError
from robust_sabn.training.batches import BatchPlan

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
WRITERS = {
    "cifar10": write_cifar10, "cifar100": write_cifar100, "svhn": write_svhn,
    "fashion-mnist": write_fashion_mnist, "imagefolder": write_imagefolder,
}
SHAPES = {"cifar10": (3, 32, 10), "cifar100": (3, 32, 100), "svhn": (3, 32, 10), "fashion-mnist": (1, 28, 10),
          "imagefolder": (3, 16, 3)}


def as_uint8(dataset):
    items = [dataset[i] for i in range(len(dataset))]
    images = torch.stack([(x * 255).round().to(torch.uint8) for x, _ in items])
    return images, torch.tensor([y for _, y in items])


def image_keys(images):
    return {bytes(image.flatten().tolist()) for image in images}


def test_registry_lists_the_five_datasets():
    assert set(DATASETS) == set(WRITERS)


@pytest.mark.parametrize("name", DATASETS)
def test_format_reads_back_exactly(tmp_path, name):
    written = WRITERS[name](tmp_path)
    splits = load_dataset(name, tmp_path, val_size=0)
    channels, size, classes = SHAPES[name]
    assert (splits.in_channels, splits.image_size, splits.num_classes) == (channels, size, classes)
    assert len(splits.mean) == len(splits.std) == channels and len(splits.val) == 0
    for split in ("train", "test"):
        dataset = getattr(splits, split)
        x, y = dataset[0]
        assert x.dtype == torch.float32 and x.shape == (channels, size, size) and isinstance(y, int)
        images, labels = as_uint8(dataset)
        assert torch.equal(images, written[split][0]), split
        assert torch.equal(labels, written[split][1]), split


def test_cifar_folder_itself_and_val_folder_accepted(tmp_path):
    written = write_cifar10(tmp_path)
    splits = load_dataset("cifar10", tmp_path / "cifar-10-batches-py", val_size=0)
    assert torch.equal(as_uint8(splits.test)[0], written["test"][0])
    written = write_imagefolder(tmp_path / "folder", test_folder="val")
    assert torch.equal(as_uint8(load_dataset("imagefolder", tmp_path / "folder").test)[0], written["test"][0])


def test_val_split_disjoint_and_fixed_by_seed(tmp_path):
    written = write_fashion_mnist(tmp_path, n_train=200)
    all_train = image_keys(written["train"][0])
    splits = load_dataset("fashion-mnist", tmp_path, seed=1)
    assert len(splits.val) == 20 and len(splits.train) == 180  # default: min(1000, 10%)
    train, val = image_keys(as_uint8(splits.train)[0]), image_keys(as_uint8(splits.val)[0])
    assert not train & val and train | val == all_train
    assert image_keys(as_uint8(load_dataset("fashion-mnist", tmp_path, seed=1).val)[0]) == val
    assert image_keys(as_uint8(load_dataset("fashion-mnist", tmp_path, seed=2).val)[0]) != val
    assert len(load_dataset("fashion-mnist", tmp_path, val_size=50).val) == 50
    with pytest.raises(ConfigError, match="val_size"):
        load_dataset("fashion-mnist", tmp_path, val_size=200)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn", "fashion-mnist"])
def test_missing_folder_names_path_and_download(tmp_path, name):
    with pytest.raises(ConfigError, match="--download") as info:
        load_dataset(name, tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value)


def test_missing_fashion_mnist_mentions_debian_package(tmp_path):
    with pytest.raises(ConfigError, match="dataset-fashion-mnist"):
        load_dataset("fashion-mnist", tmp_path)


def test_imagefolder_and_unknown_dataset_errors(tmp_path):
    with pytest.raises(ConfigError, match="--data-dir"):
        load_dataset("imagefolder")
    with pytest.raises(ConfigError, match=str(tmp_path / "train")):
        load_dataset("imagefolder", tmp_path)
    with pytest.raises(ConfigError, match="cifar10"):
        load_dataset("mnist", tmp_path)


def test_corrupt_files_are_config_errors(tmp_path):
    write_fashion_mnist(tmp_path / "fm")
    (tmp_path / "fm" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(ConfigError, match="t10k-labels"):
        load_dataset("fashion-mnist", tmp_path / "fm")
    write_cifar10(tmp_path / "c")
    (tmp_path / "c" / "cifar-10-batches-py" / "test_batch").write_bytes(b"\x80\x02garbage")
    with pytest.raises(ConfigError, match="test_batch"):
        load_dataset("cifar10", tmp_path / "c")


class Boom:
    def __reduce__(self):
        return (Path.touch, (Path(BOOM_FILE),))


BOOM_FILE = ""


def test_cifar_pickle_cannot_run_code(tmp_path):
    global BOOM_FILE
    BOOM_FILE = str(tmp_path / "executed")
    write_cifar10(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "wb") as f:
        pickle.dump({"data": Boom(), "labels": []}, f, protocol=2)
    with pytest.raises(ConfigError, match="refusing"):
        load_dataset("cifar10", tmp_path)
    assert not Path(BOOM_FILE).exists()


def numbered(n: int, channels: int = 1, size: int = 6) -> ImageTensors:
    images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8)
    return ImageTensors(images, torch.arange(n))


def augment(x, generator):
    return random_crop_flip(x, generator, padding=2, flip=True)


@pytest.mark.parametrize("drop_last", [False, True])
def test_resumed_iteration_equals_tail_bit_for_bit(drop_last):
    data = numbered(53)
    plan = BatchPlan(data, 8, seed=3, drop_last=drop_last, augment=augment)
    full = list(plan.epoch(2))
    assert len(full) == plan.per_process() == (6 if drop_last else 7)
    for k in (1, 4, len(full)):
        tail = list(plan.epoch(2, start_batch=k))
        assert len(tail) == len(full) - k
        for (x, y), (x_full, y_full) in zip(tail, full[k:]):
            assert torch.equal(x, x_full) and torch.equal(y, y_full)


def test_skipped_batches_are_not_loaded():
    class Counting(ImageTensors):
        loaded = 0

        def batch(self, indices):
            Counting.loaded += len(indices)
            return super().batch(indices)

    data = Counting(numbered(40).images, torch.arange(40))
    list(BatchPlan(data, 8, seed=0).epoch(0, start_batch=3))
    assert Counting.loaded == 16


def test_order_depends_on_seed_and_epoch_only():
    data = numbered(32)
    labels = lambda epoch, **kw: torch.cat([y for _, y in BatchPlan(data, 8, **kw).epoch(epoch)])  # noqa: E731
    a = labels(0, seed=0)
    assert torch.equal(a, labels(0, seed=0))
    assert not torch.equal(a, labels(1, seed=0))
    assert not torch.equal(a, labels(0, seed=1))
    assert torch.equal(labels(3, shuffle=False, seed=5), torch.arange(32))
    assert sorted(a.tolist()) == list(range(32))


@pytest.mark.parametrize("n,drop_last", [(40, False), (41, True), (41, False)])
def test_two_rank_shards_disjoint_and_equal_length(n, drop_last):
    data = numbered(n)
    plan = BatchPlan(data, 6, seed=0, drop_last=drop_last)
    shards = [torch.cat([y for _, y in plan.epoch(1, rank=r, world_size=2)]) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1])
    assert plan.per_process(world_size=2) == len(list(plan.epoch(1, rank=1, world_size=2)))
    union = set(shards[0].tolist()) | set(shards[1].tolist())
    if n % 2 == 0 or drop_last:
        assert not set(shards[0].tolist()) & set(shards[1].tolist())
        assert len(union) == 2 * len(shards[0])
    else:  # one item repeated to make the shards equal, as DistributedSampler does
        assert union == set(range(n)) and len(shards[0]) == (n + 1) // 2


@pytest.mark.slow
def test_file_datasets_iterate_through_a_dataloader(tmp_path):
    write_imagefolder(tmp_path, n_train=30, n_test=6)
    splits = load_dataset("imagefolder", tmp_path, val_size=3)
    plan = BatchPlan(splits.train, 8, seed=0, augment=splits.augment)
    full = list(plan.epoch(0))
    assert [len(y) for _, y in full] == [8, 8, 8, 3] and full[0][0].shape == (8, 3, 16, 16)
    tail = list(plan.epoch(0, start_batch=2, num_workers=1))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(tail, full[2:]))


@pytest.mark.slow
def test_worker_processes_give_the_same_batches(tmp_path):
    """In-memory data is gathered and augmented in the workers too (not only file datasets), batch by batch with
    its own seed, so the batches are the same for any number of workers and a resume from any batch."""
    write_cifar10(tmp_path, n_train=50, n_test=5)
    splits = load_dataset("cifar10", tmp_path, val_size=2)
    plan = BatchPlan(splits.train, 8, seed=3, augment=splits.augment, drop_last=True)
    alone = list(plan.epoch(1))
    workers = list(plan.epoch(1, start_batch=1, num_workers=2))
    assert len(workers) == len(alone) - 1
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(workers, alone[1:]))


def test_crop_flip_is_a_shifted_possibly_flipped_copy():
    x = torch.rand(64, 2, 7, 7) + 1  # no zeros, so padding is recognizable
    out = random_crop_flip(x, torch.Generator().manual_seed(0), padding=3, flip=True)
    padded = torch.nn.functional.pad(x, (3,) * 4)
    seen = set()
    for i in range(len(x)):
        matches = [(dy, dx, f) for dy in range(7) for dx in range(7) for f in (False, True)
                   if torch.equal(out[i], (lambda c: c.flip(2) if f else c)(padded[i, :, dy:dy + 7, dx:dx + 7]))]
        assert matches, i
        seen.update(matches)
    assert len({(dy, dx) for dy, dx, _ in seen}) > 10 and {f for _, _, f in seen} == {False, True}
    again = random_crop_flip(x, torch.Generator().manual_seed(0), padding=3, flip=True)
    assert torch.equal(out, again)


@pytest.mark.parametrize("padding, flip, shape", [(4, True, (33, 3, 32, 32)), (2, False, (9, 1, 28, 28)),
                                                  (3, True, (5, 2, 7, 9))])
def test_batched_crop_equals_the_per_image_loop_for_the_same_generator(padding, flip, shape):
    x = torch.rand(shape)
    batched = random_crop_flip(x, torch.Generator().manual_seed(5), padding, flip)
    assert torch.equal(batched, crops_one_by_one(x, torch.Generator().manual_seed(5), padding, flip))


@pytest.mark.parametrize("name,flips", [("cifar10", True), ("svhn", False), ("fashion-mnist", False)])
def test_standard_augmentation_per_dataset(tmp_path, name, flips):
    WRITERS[name](tmp_path)
    splits = load_dataset(name, tmp_path, val_size=0)
    assert splits.augment.flip is flips and splits.augment.padding == (2 if name == "fashion-mnist" else 4)


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    splits = load_dataset("fashion-mnist")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (59000, 1000, 10000)
    assert splits.num_classes == 10 and splits.in_channels == 1 and splits.image_size == 28
    x, y = next(BatchPlan(splits.test, 10000, shuffle=False).epoch(0))
    assert x.shape == (10000, 1, 28, 28) and 0 <= x.min() and x.max() <= 1
    assert torch.bincount(y).tolist() == [1000] * 10
    assert abs(x.mean().item() - splits.mean[0]) < 0.01


def test_uncompressed_idx_files_and_torchvision_raw_folder(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    written = write_fashion_mnist(raw)
    for gz in raw.glob("*.gz"):
        gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    splits = load_dataset("fashion-mnist", tmp_path, val_size=0)  # finds <data_dir>/FashionMNIST/raw
    assert torch.equal(as_uint8(splits.train)[0], written["train"][0])


def test_imagefolder_resizes_to_image_size(tmp_path):
    write_imagefolder(tmp_path, size=16)
    splits = load_dataset("imagefolder", tmp_path, image_size=8, val_size=0)
    assert splits.image_size == 8 and splits.train[0][0].shape == (3, 8, 8)
    assert splits.augment.padding == 1 and splits.augment.flip
