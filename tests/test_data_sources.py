"""Data sources as plug-in objects in one registry: the built-ins, a user's tabular source (by
registered name, import string and function), the checks on what a plug-in gives, preflight."""

from __future__ import annotations

import re
import sys
import textwrap
import uuid

import numpy as np
import pytest
import torch

from baldflow.data import (
    DISK_SOURCE,
    SOURCES,
    DataSource,
    DataSourceError,
    DataSplits,
    MemoryPool,
    SourceNotReadyError,
    SourceParams,
    balanced_initial_indices,
    check_splits,
    data_source,
    load_source,
    open_campaign_pool,
    repeat_pool,
    source_names,
    source_streams,
)
from baldflow.data.sources import load_digits_source
from baldflow.data.splits import derived_generator
from baldflow.labeling import describe_item
from baldflow.plugins import SOURCE_PLUGINS, PluginError

BUILTINS = ["cifar10", "digits", "disk", "fashion-mnist", "folder", "mnist", "npz"]


def tabular_splits(seed: int, rows: int = 60, *, ids=None) -> DataSplits:
    """60 rows of 4 features in 3 classes from a seeded generator: 36 pool, 12 val, 12 test."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 4, generator=generator)
    y = torch.arange(rows) % 3
    ids = ids if ids is not None else [f"row-{i}" for i in range(rows)]
    n_pool, n_val = rows * 6 // 10, rows * 2 // 10
    return DataSplits(
        pool_x=x[:n_pool],
        pool_y=y[:n_pool],
        pool_ids=ids[:n_pool],
        val_x=x[n_pool : n_pool + n_val],
        val_y=y[n_pool : n_pool + n_val],
        test_x=x[n_pool + n_val :],
        test_y=y[n_pool + n_val :],
        class_names=["a", "b", "c"],
    )


class TinyTabular(DataSource):
    """A user's in-memory source of table rows (no images, no files)."""

    def load(self, root, *, seed, rows: int = 60):
        return tabular_splits(seed, rows)

    def preflight(self, root, options):
        if root is not None and not root.exists():
            raise SourceNotReadyError(f"tiny table {root} is missing; fix: --set data.root=DIR")

    def describe_item(self, root, sample_id):
        return f"table row {sample_id}"


@pytest.fixture
def registered():
    """Register a source under a name for one test, whatever it raises."""
    names = []

    def register(name, obj):
        SOURCE_PLUGINS.register(name, obj)
        names.append(name)
        return name

    yield register
    for name in names:
        SOURCE_PLUGINS.unregister(name)


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    """A module of plug-ins on sys.path under a fresh name (the registry caches by spec)."""
    name = f"my_plugins_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            import torch
            from baldflow.data import DataSplits

            def load_rows(root, *, seed, rows=30):
                g = torch.Generator().manual_seed(seed)
                x = torch.randn(rows, 2, generator=g)
                y = torch.arange(rows) % 2
                ids = [f"r{i}" for i in range(rows)]
                return DataSplits(x[:20], y[:20], ids[:20], x[20:25], y[20:25], x[25:], y[25:],
                                  ["no", "yes"])

            class Rows:  # keeps the contract without subclassing DataSource
                def load(self, root, *, seed, rows=30):
                    return load_rows(root, seed=seed, rows=rows)

            def two_positional(a, b):
                return None

            class Nothing:
                pass
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def open_pool(spec, *, root=None, repeat=1, noise_std=0.0, options=None, per_class=2, seed=0):
    return open_campaign_pool(
        spec,
        root=root,
        repeat=repeat,
        noise_std=noise_std,
        options=options or {},
        initial_per_class=per_class,
        seed=seed,
    )


# ---------------------------------------------------------------------------------------------
# the built-ins


def test_every_builtin_name_resolves_to_a_data_source():
    assert set(BUILTINS) <= set(source_names())
    for name in BUILTINS:
        source = data_source(name)
        assert isinstance(source, DataSource) and source.name == name
        assert source.streamed is (name == DISK_SOURCE) is source_streams(name)
        assert SOURCE_PLUGINS.resolve(name).builtin
    assert set(SOURCES) == set(BUILTINS) - {DISK_SOURCE}
    assert data_source("digits").accepted_options() == [
        "val_size",
        "test_size",
        "pool_size",
        "normalize",
    ]
    assert data_source(DISK_SOURCE).accepted_options() == []


def test_the_digits_pool_is_bit_identical_to_the_loader_and_repeat_logic():
    seed = 3
    pool = open_pool("digits", repeat=2, noise_std=0.1, per_class=2, seed=seed)
    assert isinstance(pool, MemoryPool)
    # Today's path written out: the loader, the initial set before repetition, then the copies.
    splits = load_digits_source(None, seed=seed)
    initial = balanced_initial_indices(
        splits.pool_y, 2, derived_generator(seed, "initial-labeled-set"), num_classes=10
    )
    initial_ids = [splits.pool_ids[i] for i in initial.tolist()]
    expected = repeat_pool(splits, 2, 0.1, seed)
    assert pool.splits.pool_ids == expected.pool_ids
    assert pool.initial_ids == initial_ids
    for part in ("pool_x", "pool_y", "val_x", "val_y", "test_x", "test_y"):
        got, want = getattr(pool.splits, part), getattr(expected, part)
        assert got.dtype == want.dtype and torch.equal(got, want), part
    assert pool.splits.info == expected.info


def test_load_source_resolves_through_the_registry(registered):
    with pytest.raises(DataSourceError, match="unknown data source 'imagenet'; valid names: cif"):
        load_source("imagenet")
    with pytest.raises(DataSourceError, match="is streamed: it has no load"):
        load_source(DISK_SOURCE)
    registered("test-tabular", TinyTabular)
    splits = load_source("test-tabular", seed=1, rows=30)
    assert len(splits.pool_ids) == 18 and splits.class_names == ["a", "b", "c"]
    with pytest.raises(DataSourceError, match="invalid option for data source 'test-tabular'"):
        load_source("test-tabular", colour=True)


# ---------------------------------------------------------------------------------------------
# a user's source


def test_a_registered_tabular_source_opens_as_a_memory_pool(registered):
    registered("test-tabular", TinyTabular)
    assert "test-tabular" in source_names() and not source_streams("test-tabular")
    source = data_source("test-tabular")
    assert isinstance(source, TinyTabular) and source.name == "test-tabular"
    assert source.accepted_options() == ["rows"]
    pool = open_pool("test-tabular", per_class=2, seed=5)
    assert isinstance(pool, MemoryPool)
    assert pool.pool_size == 36 and pool.input_shape == (4,) and pool.num_classes == 3
    assert len(pool.initial_ids) == 6 and set(pool.initial_ids) <= set(pool.pool_ids)
    again = source.open(SourceParams(initial_per_class=2, seed=5))
    assert again.initial_ids == pool.initial_ids
    repeated = open_pool("test-tabular", repeat=3, noise_std=0.5, per_class=1, options={"rows": 30})
    assert repeated.pool_size == 54 and len(repeated.initial_ids) == 3
    assert describe_item("test-tabular", None, "row-4") == "table row row-4"


def test_a_source_by_import_string_and_a_loader_function(plugin_module):
    by_class = f"{plugin_module}:Rows"
    source = data_source(by_class)
    assert source.name == by_class and source.accepted_options() == ["rows"]
    pool = open_pool(by_class, per_class=3, seed=2)
    assert isinstance(pool, MemoryPool) and pool.pool_size == 20 and len(pool.initial_ids) == 6
    plugin = SOURCE_PLUGINS.resolve(by_class)
    assert plugin.origin == "import string" and plugin.code_hash
    by_function = f"{plugin_module}:load_rows"
    assert data_source(by_function).accepted_options() == ["rows"]
    assert open_pool(by_function, seed=2).pool_ids == pool.pool_ids
    assert describe_item(by_function, "/data", "r3") == f"{by_function} at /data, sample r3"
    assert describe_item(by_function, None, "r3") == f"{by_function} sample r3"


def test_the_same_source_class_from_this_module_by_import_string(registered, monkeypatch):
    # The test module itself, importable by its file's directory (tests/ is not a package).
    module = sys.modules[__name__]
    monkeypatch.setitem(sys.modules, "test_data_sources_alias", module)
    pool = open_pool("test_data_sources_alias:TinyTabular", per_class=1)
    assert isinstance(pool, MemoryPool) and len(pool.initial_ids) == 3


# ---------------------------------------------------------------------------------------------
# what a plug-in gives is checked


def source_giving(splits_of):
    class Giving(DataSource):
        def load(self, root, *, seed):
            return splits_of(seed)

    return Giving


def test_duplicate_ids_are_refused_naming_the_duplicate(registered):
    def with_duplicate(seed):
        splits = tabular_splits(seed)
        splits.pool_ids[7] = splits.pool_ids[2]  # after DataSplits checked them
        return splits

    registered("test-dup", source_giving(with_duplicate))
    with pytest.raises(DataSourceError) as caught:
        open_pool("test-dup")
    text = str(caught.value)
    assert text.startswith("data source 'test-dup': sample id 'row-2' appears twice")
    assert "\n" not in text
    # Duplicates DataSplits itself refuses are named as the plug-in's too.
    ids = [f"row-{i}" for i in range(60)]
    ids[5] = "row-0"
    registered("test-dup-2", source_giving(lambda seed: tabular_splits(seed, ids=ids)))
    with pytest.raises(DataSourceError, match=r"^data source 'test-dup-2': pool_ids must be uniq"):
        open_pool("test-dup-2")


def test_ids_that_are_not_text_are_refused_naming_the_first(registered):
    ids = [f"row-{i}" for i in range(60)]
    ids[4] = 4
    registered("test-int-id", source_giving(lambda seed: tabular_splits(seed, ids=ids)))
    with pytest.raises(
        DataSourceError,
        match=r"^data source 'test-int-id': pool id 4 \(entry 4\) is of type int, not str",
    ):
        open_pool("test-int-id")


def test_class_names_and_labels_are_checked():
    splits = tabular_splits(0)
    splits.class_names = []
    with pytest.raises(DataSourceError, match="^data source 'x': class_names must be a non-emp"):
        check_splits("x", splits)
    splits = tabular_splits(0)
    splits.class_names = ["a", "b", ""]
    with pytest.raises(DataSourceError, match="^data source 'x': class name '' .*is empty"):
        check_splits("x", splits)
    splits = tabular_splits(0)
    splits.val_y = splits.val_y + 1
    with pytest.raises(DataSourceError, match=r"val_y row 2 has label 3, outside the 3 class"):
        check_splits("x", splits)
    splits = tabular_splits(0)
    splits.pool_y = splits.pool_y.float()
    with pytest.raises(DataSourceError, match="pool_y must be a tensor of integer labels"):
        check_splits("x", splits)
    with pytest.raises(DataSourceError, match="load\\(\\) returned a dict, not baldflow"):
        check_splits("x", {})


def test_a_plugins_own_open_is_checked_too(registered):
    class OwnOpen(DataSource):
        streamed = True

        def open(self, params):
            splits = tabular_splits(params.seed)
            pool = MemoryPool(splits, ["row-0"])
            splits.pool_ids[1] = "row-0"
            return pool

    registered("test-own-open", OwnOpen)
    assert source_streams("test-own-open")
    with pytest.raises(DataSourceError, match="^data source 'test-own-open': sample id 'row-0'"):
        open_pool("test-own-open")


def test_plugins_that_cannot_be_sources_are_one_line_plugin_errors(plugin_module, registered):
    with pytest.raises(PluginError) as caught:
        data_source("no_such_module_for_baldflow:Thing")
    assert "does not import" in str(caught.value) and "\n" not in str(caught.value)
    for attr, problem in (
        ("Nothing", "has neither load"),
        ("two_positional", "cannot be called as load(root, *, seed)"),
    ):
        with pytest.raises(PluginError, match=re.escape(problem)) as caught:
            data_source(f"{plugin_module}:{attr}")
        assert "\n" not in str(caught.value)
    registered("test-neither", object())
    with pytest.raises(PluginError, match="'test-neither'.*neither load"):
        data_source("test-neither")

    class Empty(DataSource):
        pass

    registered("test-empty", Empty)
    with pytest.raises(PluginError, match="Empty implements neither load"):
        data_source("test-empty")


# ---------------------------------------------------------------------------------------------
# preflight and the hand-off


def test_preflight_goes_through_the_source(tmp_path, registered):
    from baldflow.config import ConfigError, validate
    from baldflow.preflight import PreflightError, check_data

    def config(data):
        return validate({"data": data}, check_names=False)

    with pytest.raises(PreflightError, match="--set data.root=FILE.npz"):
        check_data(config({"source": "npz"}))
    with pytest.raises(PreflightError, match="which is not a file"):
        check_data(config({"source": "npz", "root": str(tmp_path / "missing.npz")}))
    with pytest.raises(PreflightError, match="which is not a directory"):
        check_data(config({"source": "folder", "root": str(tmp_path / "nothing")}))
    with pytest.raises(PreflightError, match="source plug-in 'no_such_mod_xyz:Src'.*does not imp"):
        check_data(config({"source": "no_such_mod_xyz:Src"}))
    registered("test-tabular", TinyTabular)
    check_data(config({"source": "test-tabular", "options": {"rows": 30}}))
    with pytest.raises(PreflightError, match="tiny table .* is missing"):
        check_data(config({"source": "test-tabular", "root": str(tmp_path / "absent")}))
    with pytest.raises(ConfigError, match="did you mean --set data.options.rows=3"):
        check_data(config({"source": "test-tabular", "options": {"row": 3}}))
    with pytest.raises(ConfigError, match="duplicates the parameter campaign.seed"):
        check_data(config({"source": "test-tabular", "options": {"seed": 3}}))


def test_describe_item_asks_the_source(tmp_path):
    assert describe_item("folder", str(tmp_path), "cat/1.png") == str(tmp_path / "cat" / "1.png")
    assert describe_item("folder", str(tmp_path), "cat/1.png~r2") == str(tmp_path / "cat/1.png")
    assert describe_item("folder", None, "cat/1.png") == "folder sample cat/1.png"
    assert describe_item("digits", None, "12") == "digits sample 12"
    assert describe_item("npz", "/d/x.npz", "12") == "npz at /d/x.npz, sample 12"
    # A plug-in no longer installed still gets a line on the sheet.
    assert describe_item("gone_module_xyz:Src", None, "7") == "gone_module_xyz:Src sample 7"


def test_a_plugins_ids_keep_their_order_in_the_pool(registered):
    """Ids from a plug-in keep the plug-in's order in the pool (no sort, no renaming)."""
    ids = [f"z{59 - i}" for i in range(60)]
    registered("test-order", source_giving(lambda seed: tabular_splits(seed, ids=ids)))
    pool = open_pool("test-order")
    assert pool.pool_ids == ids[:36]
    assert np.array_equal(pool.inputs(ids[:3]).numpy(), tabular_splits(0).pool_x[:3].numpy())
