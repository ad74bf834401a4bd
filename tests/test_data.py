"""Data sources read small files written here in their real formats; repetition and initial sets."""

from __future__ import annotations

import pickle
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from datafiles import write_idx as write_idx_file
from PIL import Image

from baldflow.data import (
    SOURCES,
    DataNotFoundError,
    DataSourceError,
    DataSplits,
    balanced_initial_indices,
    load_source,
    prepare_pool,
    read_idx,
    repeat_pool,
    split_repeat_id,
)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test: loaders must only read local files."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a data source tried to reach the network: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def fake_images(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), generator=generator, dtype=torch.uint8).numpy()


def cyclic_labels(n: int, classes: int = 10) -> np.ndarray:
    return (np.arange(n) % classes).astype(np.uint8)


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    """An IDX file at `path`, or gzipped at `path`.gz."""
    write_idx_file(path.with_name(path.name + ".gz") if compress else path, array)


def write_mnist_family(directory: Path, compress: bool, n_train=60, n_test=20) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": fake_images(n_train, (28, 28), 1),
        "train-labels-idx1-ubyte": cyclic_labels(n_train),
        "t10k-images-idx3-ubyte": fake_images(n_test, (28, 28), 2),
        "t10k-labels-idx1-ubyte": cyclic_labels(n_test),
    }
    for stem, array in arrays.items():
        write_idx(directory / stem, array, compress)
    return arrays


# ---------------------------------------------------------------------------------------------
# digits


def test_digits_is_a_seeded_normalised_three_way_split():
    splits = load_source("digits", seed=0)
    assert splits.input_shape == (1, 8, 8) and splits.num_classes == 10
    sizes = (len(splits.pool_ids), len(splits.val_y), len(splits.test_y))
    assert sum(sizes) == 1797 and sizes[1] == 144 and sizes[2] == 359
    assert splits.pool_x.dtype == torch.float32 and splits.pool_y.dtype == torch.long
    assert abs(float(splits.pool_x.mean())) < 1e-4 and abs(float(splits.pool_x.std()) - 1) < 1e-3
    assert len(set(splits.pool_ids)) == len(splits.pool_ids)
    again = load_source("digits", seed=0)
    assert again.pool_ids == splits.pool_ids and torch.equal(again.test_x, splits.test_x)
    other = load_source("digits", seed=1)
    assert other.pool_ids != splits.pool_ids
    # Ids are row numbers of sklearn's load_digits: the label travels with the id.
    from sklearn.datasets import load_digits

    target = load_digits().target
    pairs = zip(splits.pool_ids, splits.pool_y.tolist(), strict=True)
    assert all(target[int(i)] == y for i, y in pairs)


def test_pool_size_and_index_of():
    splits = load_source("digits", pool_size=100, val_size=50, test_size=0.25)
    assert len(splits.pool_ids) == 100 and len(splits.val_y) == 50
    assert splits.index_of(splits.pool_ids[5:8]).tolist() == [5, 6, 7]
    with pytest.raises(KeyError, match="'nope'"):
        splits.index_of(["nope"])


# ---------------------------------------------------------------------------------------------
# IDX: fashion-mnist, mnist


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trip(tmp_path, compress):
    array = fake_images(3, (4, 5), 0)
    write_idx(tmp_path / "a-idx3-ubyte", array, compress)
    path = tmp_path / ("a-idx3-ubyte.gz" if compress else "a-idx3-ubyte")
    np.testing.assert_array_equal(read_idx(path), array)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataSourceError, match="not an IDX file"):
        read_idx(tmp_path / "bad")


def test_fashion_mnist_reads_gzipped_idx_files(tmp_path):
    arrays = write_mnist_family(tmp_path / "fashion", compress=True)
    splits = load_source("fashion-mnist", root=str(tmp_path / "fashion"), val_size=10)
    assert splits.input_shape == (1, 28, 28)
    assert (len(splits.pool_ids), len(splits.val_y), len(splits.test_y)) == (50, 10, 20)
    assert splits.class_names[0] == "T-shirt/top" and splits.class_names[9] == "Ankle boot"
    # Un-normalised pixels match the file, row for row, through the ids.
    raw = load_source("fashion-mnist", root=str(tmp_path / "fashion"), val_size=10, normalize=False)
    i = int(raw.pool_ids[3])
    expected = torch.as_tensor(arrays["train-images-idx3-ubyte"][i], dtype=torch.float32) / 255
    torch.testing.assert_close(raw.pool_x[3, 0], expected)
    assert int(raw.pool_y[3]) == arrays["train-labels-idx1-ubyte"][i]


def test_fashion_mnist_missing_says_how_to_get_it(tmp_path):
    with pytest.raises(DataNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_source("fashion-mnist", root=str(tmp_path / "absent"))


def test_mnist_reads_the_torchvision_raw_layout(tmp_path):
    arrays = write_mnist_family(tmp_path / "MNIST" / "raw", compress=False)
    splits = load_source("mnist", root=str(tmp_path), val_size=0.2, normalize=False)
    assert (len(splits.pool_ids), len(splits.val_y), len(splits.test_y)) == (48, 12, 20)
    expected = torch.as_tensor(arrays["t10k-images-idx3-ubyte"], dtype=torch.float32) / 255
    torch.testing.assert_close(splits.test_x[:, 0], expected)
    assert splits.class_names == [str(c) for c in range(10)]


def test_mnist_reads_the_torchvision_processed_layout(tmp_path):
    processed = tmp_path / "MNIST" / "processed"
    processed.mkdir(parents=True)
    for file, n, seed in (("training.pt", 30, 3), ("test.pt", 10, 4)):
        data = torch.as_tensor(fake_images(n, (28, 28), seed))
        torch.save((data, torch.as_tensor(cyclic_labels(n), dtype=torch.long)), processed / file)
    splits = load_source("mnist", root=str(tmp_path), val_size=5)
    assert (len(splits.pool_ids), len(splits.val_y), len(splits.test_y)) == (25, 5, 10)


def test_mnist_needs_a_root_and_only_downloads_when_asked(tmp_path):
    with pytest.raises(DataSourceError, match="download=True"):
        load_source("mnist")
    with pytest.raises(DataNotFoundError, match="download=True"):
        load_source("mnist", root=str(tmp_path))


# ---------------------------------------------------------------------------------------------
# CIFAR-10


def write_cifar10(root: Path, per_batch: int = 8, n_test: int = 10) -> None:
    """torchvision's python layout: pickled dicts with uint8 rows of 3*32*32 (R, G, B planes)."""
    directory = root / "cifar-10-batches-py"
    directory.mkdir(parents=True)
    batches = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for b, name in enumerate(batches):
        n = n_test if name == "test_batch" else per_batch
        entry = {
            "batch_label": name,
            "data": fake_images(n, (3 * 32 * 32,), 10 + b),
            "labels": [int(c) for c in cyclic_labels(n)],
            "filenames": [f"{name}_{i}.png" for i in range(n)],
        }
        with open(directory / name, "wb") as f:
            pickle.dump(entry, f)
    names = ["airplane", "automobile", "bird", "cat", "deer"]
    names += ["dog", "frog", "horse", "ship", "truck"]
    with open(directory / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": per_batch}, f)


def test_cifar10_reads_the_python_batches(tmp_path):
    write_cifar10(tmp_path)
    splits = load_source("cifar10", root=str(tmp_path), val_size=4, normalize=False)
    assert splits.input_shape == (3, 32, 32)
    assert (len(splits.pool_ids), len(splits.val_y), len(splits.test_y)) == (36, 4, 10)
    assert splits.class_names[1] == "automobile"
    # Row 9 is the second image of data_batch_2: channel planes in R, G, B order.
    row = fake_images(8, (3 * 32 * 32,), 11)[1].reshape(3, 32, 32)
    position = splits.pool_ids.index("9")
    torch.testing.assert_close(
        splits.pool_x[position], torch.as_tensor(row, dtype=torch.float32) / 255
    )
    normalised = load_source("cifar10", root=str(tmp_path), val_size=4)
    per_channel = normalised.pool_x.transpose(0, 1).flatten(1)
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(3), atol=1e-4, rtol=0)


def test_cifar10_missing_files_are_named(tmp_path):
    with pytest.raises(DataNotFoundError, match="data_batch_1"):
        load_source("cifar10", root=str(tmp_path))


# ---------------------------------------------------------------------------------------------
# npz and image folders


def test_npz_with_ids_class_names_and_a_fixed_test_set(tmp_path):
    path = tmp_path / "data.npz"
    X = np.arange(40 * 6, dtype=np.float32).reshape(40, 6)
    np.savez(
        path,
        X=X,
        y=np.arange(40) % 4,
        ids=np.array([f"row-{i:03d}" for i in range(40)]),
        class_names=np.array(["a", "b", "c", "d"]),
        X_test=np.zeros((8, 6), dtype=np.float32),
        y_test=np.arange(8) % 4,
    )
    splits = load_source("npz", root=str(path), val_size=10, normalize=False)
    assert splits.input_shape == (6,) and splits.class_names == ["a", "b", "c", "d"]
    assert (len(splits.pool_ids), len(splits.val_y), len(splits.test_y)) == (30, 10, 8)
    i = int(splits.pool_ids[0].removeprefix("row-"))
    torch.testing.assert_close(splits.pool_x[0], torch.as_tensor(X[i]))


def test_npz_string_labels_and_default_ids(tmp_path):
    path = tmp_path / "images.npz"
    np.savez(path, X=fake_images(30, (5, 5), 0), y=np.array(["dog", "cat", "emu"] * 10))
    splits = load_source("npz", root=str(path), test_size=6, val_size=6)
    assert splits.class_names == ["cat", "dog", "emu"] and splits.input_shape == (1, 5, 5)
    assert len(splits.pool_ids) == 18 and set(splits.pool_ids) <= {str(i) for i in range(30)}
    with pytest.raises(DataNotFoundError):
        load_source("npz", root=str(tmp_path / "missing.npz"))


def write_image_tree(root: Path, classes=("ant", "bee", "cow"), per_class=6, size=(7, 5)):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.full((size[1], size[0]), (40 * c + i) % 256, dtype=np.uint8)
            Image.fromarray(pixels, mode="L").save(root / name / f"img{i}.png")


def test_folder_reads_an_image_tree(tmp_path):
    write_image_tree(tmp_path / "tree")
    splits = load_source("folder", root=str(tmp_path / "tree"), val_size=3, test_size=3)
    assert splits.class_names == ["ant", "bee", "cow"] and splits.input_shape == (1, 5, 7)
    assert len(splits.pool_ids) == 12 and splits.pool_ids[0].endswith(".png")
    raw = load_source(
        "folder", root=str(tmp_path / "tree"), val_size=3, test_size=3, normalize=False
    )
    for sample_id, x, y in zip(raw.pool_ids, raw.pool_x, raw.pool_y, strict=True):
        class_name, file = sample_id.split("/")
        assert raw.class_names[int(y)] == class_name
        value = 40 * raw.class_names.index(class_name) + int(file[3])
        assert float(x.max()) == pytest.approx(value / 255)
    rgb = load_source("folder", root=str(tmp_path / "tree"), grayscale=False, size=4)
    assert rgb.input_shape == (3, 4, 4)


def test_folder_keeps_rgb_channels_in_order(tmp_path):
    for name in ("red", "blue"):
        (tmp_path / name).mkdir()
        for i in range(5):
            pixels = np.zeros((3, 4, 3), dtype=np.uint8)  # 3 rows x 4 columns, R G B
            pixels[..., 0 if name == "red" else 2] = 200 + i
            pixels[..., 1] = 7
            Image.fromarray(pixels, mode="RGB").save(tmp_path / name / f"{i}.png")
    splits = load_source("folder", root=str(tmp_path), val_size=1, test_size=1, normalize=False)
    assert splits.input_shape == (3, 3, 4)
    for sample_id, x in zip(splits.pool_ids, splits.pool_x, strict=True):
        channel = 0 if sample_id.startswith("red/") else 2
        value = (200 + int(sample_id[-5])) / 255
        torch.testing.assert_close(x[channel], torch.full((3, 4), value))
        torch.testing.assert_close(x[1], torch.full((3, 4), 7 / 255))


def test_folder_with_train_and_test_trees(tmp_path):
    write_image_tree(tmp_path / "train")
    write_image_tree(tmp_path / "test", per_class=2)
    splits = load_source("folder", root=str(tmp_path), val_size=3)
    assert (len(splits.pool_ids), len(splits.val_y), len(splits.test_y)) == (15, 3, 6)
    # Ids are relative to the train tree, so they read like an ImageFolder's sample paths.
    assert all(i.split("/")[0] in splits.class_names for i in splits.pool_ids)
    assert torch.bincount(splits.test_y).tolist() == [2, 2, 2]


def test_folder_refuses_mixed_sizes_unless_resized(tmp_path):
    write_image_tree(tmp_path / "tree")
    Image.new("L", (9, 9)).save(tmp_path / "tree" / "ant" / "odd.png")
    with pytest.raises(DataSourceError, match="odd.png is 9x9"):
        load_source("folder", root=str(tmp_path / "tree"))
    assert load_source("folder", root=str(tmp_path / "tree"), size=(6, 8)).input_shape == (1, 6, 8)


# ---------------------------------------------------------------------------------------------
# Untrusted ids and class names


# Text that every output escapes: kept exactly as the user wrote it.
KEPT_IDS = [
    "[red]x[/red]",
    "[/]",
    "$\\foo$",
    "$x_1$",
    'a,b "q" it\'s',
    '=HYPERLINK("http://evil.example","x")',
    "-0.5",
    "@SUM(1)",
    "\u05e9\u05dc\u05d5\u05dd",  # Hebrew (right-to-left)
    "e\u0301",  # e + combining acute
    "\U0001f468\u200d\U0001f469\u200d\U0001f467",  # family emoji joined by ZWJ
    "<b>&amp;</b> :smile:",
    "x" * 10_000,
]


def write_npz(path: Path, ids, class_names=None, n=None) -> Path:
    n = len(ids) if n is None else n
    arrays = {"X": fake_images(n, (4, 4), 0), "y": np.arange(n) % 2, "ids": np.array(ids)}
    if class_names is not None:
        arrays["class_names"] = np.array(class_names)
    np.savez(path, **arrays)
    return path


def test_npz_keeps_hostile_but_printable_ids_exactly(tmp_path):
    ids = KEPT_IDS + [f"pad-{i}" for i in range(7)]
    path = write_npz(tmp_path / "hostile.npz", ids, class_names=["[b]cat", "$\\dog$"])
    splits = load_source("npz", root=str(path), val_size=2, test_size=2)
    assert splits.class_names == ["[b]cat", "$\\dog$"]
    every = set(splits.pool_ids)
    assert every <= set(ids) and len(every) == len(ids) - 4
    # Bytes ids (numpy 'S' arrays) are decoded as UTF-8, not shown as "b'...'".
    raw = tmp_path / "bytes.npz"
    np.savez(
        raw,
        X=fake_images(6, (4, 4), 0),
        y=np.arange(6) % 2,
        ids=np.array([f"caf\u00e9-{i}".encode() for i in range(6)]),
    )
    splits = load_source("npz", root=str(raw), val_size=1, test_size=1)
    assert all(i.startswith("caf\u00e9-") for i in splits.pool_ids)


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("a\nb", "control character U+000A"),
        ("a\x00b", "control character U+0000"),
        ("a\tb", "control character U+0009"),
        ("a\rb", "control character U+000D"),
        ("\x1b[31mred", "control character U+001B"),
        ("a\x7fb", "control character U+007F"),
        ("abc\u202edcba", "invisible format character U+202E"),
        ("a\u200bb", "invisible format character U+200B"),
        ("a\u2028b", "line separator U+2028"),
        (" padded", "leading or trailing whitespace"),
        ("padded\u00a0", "leading or trailing whitespace"),
        ("'quoted", "starts with an apostrophe"),
        ("", "is empty"),
    ],
)
def test_npz_refuses_ids_no_output_could_show_and_names_them(tmp_path, bad, why):
    ids = [f"ok-{i}" for i in range(9)] + [bad]
    path = write_npz(tmp_path / "bad.npz", ids)
    with pytest.raises(DataSourceError) as info:
        load_source("npz", root=str(path), val_size=1, test_size=1)
    message = str(info.value)
    assert why in message and repr(bad) in message and "entry 9" in message
    assert str(path) in message
    # The same rules hold for class names.
    path = write_npz(tmp_path / "bad-names.npz", ids[:9] + ["fine"], class_names=["cat", bad])
    with pytest.raises(DataSourceError, match="class name"):
        load_source("npz", root=str(path), val_size=1, test_size=1)


def test_ids_that_look_alike_are_refused(tmp_path):
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    path = write_npz(tmp_path / "alike.npz", ["a", nfc, "b", nfd, "c", "d"])
    with pytest.raises(DataSourceError, match="differ only in Unicode normalisation"):
        load_source("npz", root=str(path), val_size=1, test_size=1)
    path = write_npz(tmp_path / "twice.npz", ["a", "b", "a", "c", "d", "e"])
    with pytest.raises(DataSourceError, match=r"'a' appears twice \(entries 0 and 2\)"):
        load_source("npz", root=str(path), val_size=1, test_size=1)
    path = write_npz(tmp_path / "names.npz", list("abcdef"), class_names=["cat", "cat"])
    with pytest.raises(DataSourceError, match="class name 'cat' appears twice"):
        load_source("npz", root=str(path), val_size=1, test_size=1)


def test_folder_refuses_names_with_control_characters_and_keeps_the_rest(tmp_path):
    write_image_tree(tmp_path / "tree", classes=("[b]ant", "$bee$", "-cow"), per_class=3)
    splits = load_source("folder", root=str(tmp_path / "tree"), val_size=1, test_size=1)
    assert splits.class_names == ["$bee$", "-cow", "[b]ant"]
    Image.new("L", (7, 5)).save(tmp_path / "tree" / "-cow" / "new\nline.png")
    with pytest.raises(DataSourceError, match=r"sample id '-cow/new\\nline.png'.*U\+000A"):
        load_source("folder", root=str(tmp_path / "tree"), val_size=1, test_size=1)


_OPEN_FILE_LIMIT_SCRIPT = """
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
from baldflow.data import load_source
splits = load_source("folder", root=sys.argv[1], val_size=10, test_size=10)
print(len(splits.pool_ids), splits.input_shape)
"""


def test_folder_of_600_images_loads_under_an_open_file_limit_of_256(tmp_path):
    import subprocess
    import sys

    write_image_tree(tmp_path / "tree", classes=("a", "b", "c"), per_class=200, size=(4, 4))
    # Python and torch hold some descriptors already: 600 open images would not fit in 256.
    done = subprocess.run(
        [sys.executable, "-c", _OPEN_FILE_LIMIT_SCRIPT, str(tmp_path / "tree")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[0] == "580"


def test_unknown_source_and_option_are_clear_errors():
    with pytest.raises(ValueError, match="unknown data source 'imagenet'; valid names: cifar10"):
        load_source("imagenet")
    with pytest.raises(ValueError, match="invalid option for data source 'digits'.*colour"):
        load_source("digits", colour=True)
    assert set(SOURCES) == {"digits", "fashion-mnist", "mnist", "cifar10", "npz", "folder"}


# ---------------------------------------------------------------------------------------------
# repetition and the initial labeled set


def small_splits(n: int = 30) -> DataSplits:
    x = torch.arange(n * 4, dtype=torch.float32).reshape(n, 1, 2, 2)
    y = torch.arange(n) % 3
    return DataSplits(
        pool_x=x,
        pool_y=y,
        pool_ids=[f"s{i}" for i in range(n)],
        val_x=x[:3],
        val_y=y[:3],
        test_x=x[:3],
        test_y=y[:3],
        class_names=["a", "b", "c"],
    )


def test_repeated_ids_are_unique_and_name_origin_and_copy():
    base = small_splits()
    repeated = repeat_pool(base, repeat=3, noise_std=0.1, seed=4)
    assert len(repeated.pool_ids) == 90 and len(set(repeated.pool_ids)) == 90
    assert repeated.pool_ids[:2] == ["s0", "s1"] and repeated.pool_ids[30] == "s0~r1"
    for position, sample_id in enumerate(repeated.pool_ids):
        origin, copy = split_repeat_id(sample_id)
        assert copy == position // 30
        assert origin == base.pool_ids[position % 30]
        assert int(repeated.pool_y[position]) == int(base.pool_y[position % 30])
    assert repeated.val_x is base.val_x and repeated.info["repeat"] == 3


def test_repeat_noise_is_gaussian_and_deterministic_per_seed_and_copy():
    base = small_splits(500)
    a = repeat_pool(base, repeat=3, noise_std=0.1, seed=4)
    b = repeat_pool(base, repeat=3, noise_std=0.1, seed=4)
    c = repeat_pool(base, repeat=3, noise_std=0.1, seed=5)
    longer = repeat_pool(base, repeat=4, noise_std=0.1, seed=4)
    assert torch.equal(a.pool_x, b.pool_x)
    assert not torch.allclose(a.pool_x, c.pool_x)
    # Copy c's noise depends on (seed, c) only, not on how many copies were made.
    assert torch.equal(longer.pool_x[:1500], a.pool_x)
    noise = (a.pool_x - base.pool_x.repeat(3, 1, 1, 1)).reshape(3, -1)
    assert noise.std(1).sub(0.1).abs().max() < 0.01 and noise.mean().abs() < 0.01
    assert not torch.allclose(noise[0], noise[1])
    assert repeat_pool(base, repeat=1, noise_std=0.0, seed=0) is base
    with pytest.raises(DataSourceError, match="repeat must be an integer >= 1, got 0"):
        repeat_pool(base, repeat=0, noise_std=0.1, seed=0)
    with pytest.raises(DataSourceError, match="noise_std must be >= 0, got -1"):
        repeat_pool(base, repeat=2, noise_std=-1, seed=0)


def test_balanced_initial_indices():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 2, 2])
    chosen = balanced_initial_indices(labels, 2, torch.Generator().manual_seed(0))
    assert torch.bincount(labels[chosen], minlength=3).tolist() == [2, 2, 2]
    assert chosen.tolist() == sorted(set(chosen.tolist()))
    same = balanced_initial_indices(labels, 2, torch.Generator().manual_seed(0))
    assert torch.equal(chosen, same)
    with pytest.raises(DataSourceError, match="class 1 has only 3 pool samples, need"):
        balanced_initial_indices(labels, 4, torch.Generator().manual_seed(0))
    with pytest.raises(DataSourceError, match="class 3 has only 0"):
        balanced_initial_indices(labels, 1, torch.Generator().manual_seed(0), num_classes=4)


def test_prepare_pool_chooses_the_initial_set_before_repetition():
    splits, initial_ids = prepare_pool("digits", repeat=3, noise_std=0.1, initial_per_class=2)
    assert len(initial_ids) == 20 and len(splits.pool_ids) == 3 * 1294
    assert all(split_repeat_id(i)[1] == 0 for i in initial_ids)
    labels = splits.pool_y[splits.index_of(initial_ids)]
    assert torch.bincount(labels, minlength=10).tolist() == [2] * 10
    again, again_ids = prepare_pool("digits", repeat=3, noise_std=0.1, initial_per_class=2)
    assert again_ids == initial_ids and torch.equal(again.pool_x, splits.pool_x)
    _, other_ids = prepare_pool(small_splits(), initial_per_class=3, seed=1)
    assert len(other_ids) == 9


def test_digits_are_read_without_importing_scikit_learn_and_equal_its_loader():
    import subprocess
    import sys

    import numpy as np
    from sklearn.datasets import load_digits

    from baldflow.data.sources import _digits_arrays

    images, target = _digits_arrays()
    reference = load_digits()
    assert np.array_equal(images, reference.images) and np.array_equal(target, reference.target)
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from baldflow.data.sources import load_digits_source;"
            "load_digits_source(); print('sklearn' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == "False"
