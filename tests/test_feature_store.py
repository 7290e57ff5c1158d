"""The feature store behind training: written once per component, reused by other pipelines and
later runs, recomputed on request, listed and cleared from the CLI; classifiers read it a block
of rows at a time."""

from __future__ import annotations

import json
import weakref
from pathlib import Path

import numpy as np
import pytest

from cvpipe.classifiers import ClassicSpec
from cvpipe.classifiers.chunks import ArrayChunks, ArrayRef
from cvpipe.classifiers.linear_svm import LinearSVM
from cvpipe.classifiers.mlp import MLPClassifier
from cvpipe.classifiers.training import fit_classic
from cvpipe.cli import main
from cvpipe.data import load_cifar10
from cvpipe.errors import ConfigError
from cvpipe.featurestore.dataset import StoreSettings, list_stores
from tests import synthetic

PATCHES = {"name": "patches", "params": {"n_centroids": 16, "n_patches": 2000, "max_iter": 3,
                                         "pooling": [[1, 1], [2, 2]]}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    synthetic.write_image_folder(root / "src", n_train=16, n_test=4)
    return load_cifar10(root / "src", root / "data", val_fraction=0.25)


def _spec(name, features, classifier=None):
    return ClassicSpec.from_dict(name, {
        "features": features, "classifier": classifier or {"type": "linear-svm", "params": {"C": 0.01}}})


def test_a_second_run_reuses_the_features_and_gives_the_same_model(tiny, tmp_path, caplog):
    store = StoreSettings(root=tmp_path, progress=False)
    first = fit_classic(tiny, _spec("p", PATCHES), progress=False, store=store)
    second = fit_classic(tiny, _spec("p", PATCHES), progress=False, store=store)
    assert first.features["status"] == "computed" and second.features["status"] == "reused"
    # the dictionary was restored, not learned again: same features, same model
    x = np.asarray(tiny.split("test")[0])
    np.testing.assert_array_equal(first.model.transform(x), second.model.transform(x))
    np.testing.assert_array_equal(first.model.predict(x), second.model.predict(x))
    assert second.feature_fit_seconds == pytest.approx(first.feature_fit_seconds, abs=1e-3)
    kinds = sorted(e["kind"] for e in list_stores(tmp_path))
    assert kinds.count("learned") == 1 and kinds.count("features") == 3  # train, val, test
    # a record of what was learned that is damaged is learned again, with a warning
    (learned,) = (Path(e["path"]) for e in list_stores(tmp_path) if e["kind"] == "learned")
    (learned / "learned.json").write_text("[1, 2]")
    with caplog.at_level("WARNING"):
        third = fit_classic(tiny, _spec("p", PATCHES), progress=False, store=store)
    assert "cannot restore" in caplog.text and "fitting again" in caplog.text
    np.testing.assert_array_equal(third.model.predict(x), first.model.predict(x))  # seeded: the same


def test_another_pipeline_shares_the_stores_and_a_joined_set_is_assembled(tiny, tmp_path):
    store = StoreSettings(root=tmp_path, progress=False)
    fit_classic(tiny, _spec("h", {"name": "hog"}), progress=False, store=store)
    mlp = fit_classic(tiny, _spec("h-mlp", {"name": "hog"},
                                  {"type": "mlp", "params": {"hidden_sizes": [16], "max_epochs": 3}}),
                      progress=False, store=store)
    assert mlp.features["status"] == "reused"  # another classifier, the same stored features
    joined = fit_classic(tiny, _spec("hc", {"name": "hog+color"}), progress=False, store=store)
    assert joined.features["status"] == "partly reused"  # hog reused, colour computed
    # the joined matrix is the two stores side by side, equal to extracting hog+color at once
    x = np.asarray(tiny.split("test")[0])
    from cvpipe.features import FeatureSpec

    np.testing.assert_allclose(joined.model.feature_extractor.transform(x),
                               FeatureSpec.parse("hog+color").build().fit(x[:1]).transform(x), rtol=1e-6)
    assert len({e["key"] for e in list_stores(tmp_path)}) == 6  # 2 components x 3 splits


def test_force_recomputes_once_per_run(tiny, tmp_path):
    fit_classic(tiny, _spec("p", PATCHES), progress=False,
                store=StoreSettings(root=tmp_path, progress=False))
    forced = StoreSettings(root=tmp_path, progress=False, force=True)
    again = fit_classic(tiny, _spec("p", PATCHES), progress=False, store=forced)
    assert again.features["status"] == "computed"
    # another pipeline of the same run reuses what this run recomputed
    other = fit_classic(tiny, _spec("p-mlp", PATCHES, {"type": "mlp", "params": {"max_epochs": 2}}),
                        progress=False, store=forced)
    assert other.features["status"] == "reused"


def test_training_rows_are_shuffled_blocks_of_every_class(tiny, tmp_path):
    from cvpipe.features import FeatureSpec
    from cvpipe.featurestore.dataset import learned_extractor, split_features

    spec = FeatureSpec.parse("color")
    store = StoreSettings(root=tmp_path, progress=False)
    train = split_features(tiny, spec, "train", learned_extractor(tiny, spec, store), store)
    labels = train.labels()
    # the cache is sorted by class; the stored training rows are not (a block is a fair sample)
    assert not np.all(np.diff(labels) >= 0)
    assert sorted(labels.tolist()) == sorted(np.asarray(tiny.split("train")[1]).tolist())
    test = split_features(tiny, spec, "test", learned_extractor(tiny, spec, store), store)
    np.testing.assert_array_equal(test.labels(), np.asarray(tiny.split("test")[1]))  # in order


def test_shift_augmentation_trains_on_moved_copies_of_train_and_validation(tiny, tmp_path):
    from cvpipe.featurestore.sources import DatasetSource

    # the images of a shifted source: mirrored, then moved 2 rows down, edges reflected
    x = np.asarray(tiny.split("train")[0])
    base = DatasetSource(tiny, "train").chunk(0, 4).read()[0]
    moved = DatasetSource(tiny, "train", flip=True, shift=(2, 0)).chunk(0, 4).read()[0]
    np.testing.assert_array_equal(moved[:, 2:], base[:, :-2, ::-1])
    np.testing.assert_array_equal(moved[:, 1], base[:, 1, ::-1])  # row -1 reflects row 1
    assert base.shape == moved.shape == (4, *x.shape[1:])

    store = StoreSettings(root=tmp_path, progress=False)
    spec = ClassicSpec.from_dict("shifted", {
        "features": {"name": "color"}, "classifier": {"type": "linear-svm", "params": {"C": 0.01}},
        "augment_flip": True, "augment_shifts": 2})
    assert spec.training_variants() == [(False, 0, 0), (True, 0, 0), (False, 2, 0), (True, 2, 0),
                                        (False, -2, 0), (True, -2, 0)]
    fit = fit_classic(tiny, spec, progress=False, store=store)
    # train, validation and test, and five more copies each of train and validation for the refit
    assert len(fit.features["stores"]) == 3 + 2 * 5
    stores = list_stores(tmp_path)
    shifts = sorted(tuple(e["input"].get("shift", (0, 0))) for e in stores if e["kind"] == "features")
    assert shifts.count((2, 0)) == shifts.count((-2, 0)) == 4  # train and val, mirrored or not
    assert spec.to_dict()["augment_shifts"] == 2
    assert "augment_shifts" not in _spec("plain", {"name": "color"}).to_dict()  # old models' keys


@pytest.mark.parametrize("bad", [-1, 25, "2", True, 1.5])
def test_augment_shifts_out_of_range_is_refused(bad):
    with pytest.raises(ConfigError, match="augment_shifts"):
        ClassicSpec.from_dict("bad", {"features": {"name": "color"},
                                      "classifier": {"type": "linear-svm"}, "augment_shifts": bad})


def test_store_list_and_clear_from_the_cli(tiny, tmp_path, capsys, monkeypatch):
    fit_classic(tiny, _spec("c", {"name": "color"}), progress=False,
                store=StoreSettings(root=tmp_path, progress=False))
    monkeypatch.setenv("CVPIPE_DATA_ROOT", str(tmp_path))
    assert main(["store"]) == 0  # alone, it lists
    assert "3 stores" in capsys.readouterr().out
    assert main(["store", "list", "--data-root", str(tmp_path), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert len(listed["stores"]) == 3 and listed["bytes"] == sum(e["bytes"] for e in listed["stores"]) > 0
    assert main(["store", "list", "--data-root", str(tmp_path)]) == 0
    assert "3 stores" in capsys.readouterr().out
    key = listed["stores"][0]["key"]
    assert main(["store", "clear", key, "--data-root", str(tmp_path)]) == 0
    assert len(list_stores(tmp_path)) == 2
    assert main(["store", "clear", "nope", "--data-root", str(tmp_path)]) == 2
    assert "no store 'nope'" in capsys.readouterr().err
    assert main(["store", "clear", "--data-root", str(tmp_path)]) == 2  # neither keys nor --all
    assert main(["store", "clear", "--all", "--data-root", str(tmp_path)]) == 0
    assert list_stores(tmp_path) == []


class _CountingChunks(ArrayChunks):
    """Blocks whose arrays are tracked: how many are alive at once."""

    def __init__(self, X, y, rows):
        super().__init__(X, y, rows)
        self.alive = 0
        self.most = 0

    def refs(self):
        return [_CountingRef(self, r) for r in super().refs()]


class _CountingRef:
    def __init__(self, owner, ref: ArrayRef):
        self.owner, self.ref, self.n_rows = owner, ref, ref.n_rows

    def read(self):
        X, y = self.ref.read()
        X = X.copy()  # a block read from disk is a new array
        self.owner.alive += 1
        self.owner.most = max(self.owner.most, self.owner.alive)
        weakref.finalize(X, self._gone)
        return X, y

    def _gone(self):
        self.owner.alive -= 1


@pytest.mark.parametrize("make", [lambda: LinearSVM(C=0.1, max_iter=30),
                                  lambda: MLPClassifier(hidden_sizes=(64,), dropout=0.0, lr=1e-2,
                                                                max_epochs=3, batch_size=32)])
def test_classifiers_hold_a_bounded_number_of_blocks(make, monkeypatch):
    import cvpipe.classifiers.chunks as chunks_module

    # every matrix counts as large here: nothing is gathered into memory
    monkeypatch.setattr(chunks_module, "SMALL_BYTES", 0)
    monkeypatch.setattr(chunks_module.in_memory, "__defaults__", (0,))
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 12)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64) + 2 * (X[:, 1] > 0)
    chunks = _CountingChunks(X, y, rows=100)  # 20 blocks
    est = make().fit_chunks(chunks)
    assert (est.predict(X) == y).mean() > 0.8
    # one block in use and the next read ahead, whatever the number of blocks
    assert chunks.most <= 3, chunks.most


def test_standardised_blocks_equal_the_scalers_transform_bitwise():
    from sklearn.preprocessing import StandardScaler

    from cvpipe.classifiers.chunks import materialize
    from cvpipe.classifiers.training import _scaled

    rng = np.random.default_rng(0)
    X = (rng.standard_normal((300, 7)) * [1, 5, 0.1, 3, 9, 1e-3, 2] + 4).astype(np.float32)
    scaler = StandardScaler().fit(X)
    rows = ArrayChunks(X, np.zeros(300, np.int64), rows=64)
    Xs, _ = materialize(_scaled(rows, scaler))
    np.testing.assert_array_equal(Xs, scaler.transform(X))
    assert Xs.dtype == np.float32
    np.testing.assert_array_equal(rows.X, X)  # the stored rows are not changed in place


def test_a_joined_sets_linear_passes_multiply_its_stored_parts_without_joining_them(tiny, tmp_path,
                                                                                    monkeypatch):
    import cvpipe.classifiers.chunks as chunks_module
    from cvpipe.classifiers import linear_svm
    from cvpipe.classifiers.chunks import materialize
    from cvpipe.classifiers.row_stats import LOCAL, chunk_objective, chunk_sketch, targets_for
    from cvpipe.featurestore.blocks import ColumnBlock
    from cvpipe.featurestore.dataset import learned_extractor, split_features

    store = StoreSettings(root=tmp_path, progress=False)
    spec = _spec("hc", {"name": "hog+color"}).features
    learned = learned_extractor(tiny, spec, store)
    train = split_features(tiny, spec, "train", learned, store)
    train.rows = 5  # several blocks
    X, y = materialize(train)
    rng = np.random.default_rng(0)
    W, Q = rng.normal(size=(X.shape[1], 10)), rng.normal(size=(X.shape[1], 4)).astype(np.float32)
    c, T = rng.normal(size=10), targets_for(10)
    mean, scale = X.mean(0).astype(np.float64), X.std(0).astype(np.float64) + 1.0
    for ref in train.refs():
        block, labels = ref.read_columns()
        joined, _ = ref.read()
        assert isinstance(block, ColumnBlock) and len(block.parts) == 2 and block.shape == joined.shape
        np.testing.assert_array_equal(block.joined(), joined)
        for got, want in [(chunk_objective(block, labels, W, c, T), chunk_objective(joined, labels, W, c, T)),
                          (chunk_sketch(block, labels, mean, scale, Q, T),
                           chunk_sketch(joined, labels, mean, scale, Q, T))]:
            for g, w in zip(got, want, strict=True):
                np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)

    # the runner hands the parts to the functions that take them, the joined rows to the others
    kinds, map_sum = [], type(LOCAL).map_sum

    def spying(fn, chunks, *args):
        first, _ = next(chunks_module.read_ahead(chunks, for_fn=fn))
        kinds.append((fn.__name__, type(first).__name__))
        return map_sum(LOCAL, fn, chunks, *args)

    monkeypatch.setattr(LOCAL, "map_sum", spying)
    monkeypatch.setattr(chunks_module.in_memory, "__defaults__", (0,))  # the rows stay stored
    monkeypatch.setattr(linear_svm, "SMALL_BYTES", 0)  # and are not solved in their span
    model = LinearSVM(C=0.01, max_iter=200).fit_chunks(train)
    assert ("chunk_stats", "ndarray") in kinds and ("chunk_objective", "ColumnBlock") in kinds
    # the same model as on the joined matrix in memory
    reference = LinearSVM(C=0.01, max_iter=200).fit(X, y)
    np.testing.assert_allclose(model.coef_, reference.coef_, rtol=1e-3, atol=1e-4)
    np.testing.assert_array_equal(model.predict(X), reference.predict(X))


def test_stored_rows_are_mapped_copy_on_write_a_slice_at_a_time_and_a_cut_file_is_an_error(tmp_path):
    from cvpipe.errors import DataError
    from cvpipe.featurestore.store import NpyRows

    X = np.arange(60 * 7, dtype=np.float32).reshape(60, 7)
    path = tmp_path / "features.npy"
    np.save(path, X)
    rows = NpyRows(str(path))
    block = rows[10:25]
    np.testing.assert_array_equal(block, X[10:25])
    assert type(block) is np.ndarray and block.flags.writeable  # as PyTorch takes it, uncopied
    block[0] = -1  # a write stays in this process: the store is never changed
    np.testing.assert_array_equal(np.load(path), X)
    np.testing.assert_array_equal(rows[10:25], X[10:25])
    assert rows[60:70].shape == (0, 7)
    np.testing.assert_array_equal(np.asarray(rows), X)
    with open(path, "r+b") as f:  # cut short after it was opened: a clear error, not a crash
        f.truncate(path.stat().st_size - 7 * 4 * 5)
    np.testing.assert_array_equal(rows[0:50], X[:50])
    with pytest.raises(DataError, match="shorter than its header"):
        rows[40:60]


@pytest.mark.parametrize("torch_blas", [True, False], ids=["torch", "numpy"])
def test_block_products_by_either_blas_equal_numpys(monkeypatch, torch_blas):
    """matmul / matmul_t give NumPy's products whichever BLAS the machine prefers, and NumPy's
    for what torch cannot share (read-only memory, negative strides, mixed dtypes)."""
    from cvpipe.device import cpu_vendor, torch_blas_beats_numpy
    from cvpipe.featurestore import blocks

    assert isinstance(cpu_vendor(), str) and isinstance(torch_blas_beats_numpy(), bool)
    monkeypatch.setattr(blocks, "torch_blas_beats_numpy", lambda: torch_blas)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 70)).astype(np.float32)
    W = rng.normal(size=(70, 10)).astype(np.float32)
    G = rng.normal(size=(300, 10)).astype(np.float32)
    readonly = X.copy()
    readonly.flags.writeable = False
    for A in (X, readonly, X[::-1], X.astype(np.float64)):
        np.testing.assert_allclose(blocks.matmul(A, W), A @ W, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(blocks.matmul_t(A, G), A.T @ G, rtol=1e-4, atol=1e-4)


def test_test_time_shifts_score_validation_and_test_by_the_mean_of_shifted_copies(tiny, tmp_path):
    from cvpipe.featurestore.sources import augment
    from cvpipe.models import ClassicPipeline, load_model

    store = StoreSettings(root=tmp_path / "store", progress=False)
    spec = ClassicSpec.from_dict("tta", {"features": PATCHES, "test_time_shifts": 4,
                                         "classifier": {"type": "linear-svm", "params": {"C": 0.01}}})
    assert spec.test_time_variants() == [(False, 0, 0), (False, 2, 0), (False, -2, 0), (False, 0, 2),
                                         (False, 0, -2)]
    fit = fit_classic(tiny, spec, progress=False, store=store)
    # train once; validation and test, each with its four moved copies
    assert len(fit.features["stores"]) == 1 + 5 + 5
    assert fit.selection["test_time_shifts"] == 4
    x, y = (np.asarray(a) for a in tiny.split("test"))
    model = fit.model
    by_hand = np.mean([model.feature_extractor.transform(augment(x, v))
                       for v in spec.test_time_variants()], axis=0)
    np.testing.assert_allclose(model.features_of(x), by_hand, rtol=1e-5, atol=1e-6)
    assert not np.allclose(model.features_of(x), model.feature_extractor.transform(x))
    # the stored copies' mean (what test was scored on) and the model's own path agree
    assert fit.metrics["test"]["accuracy"] == pytest.approx(float((model.predict(x) == y).mean()))

    meta = ClassicPipeline(spec).train(tiny, tmp_path / "model", progress=False, store=store)
    assert meta["spec"]["test_time_shifts"] == 4
    loaded = load_model(tmp_path / "model")
    assert loaded.test_time_shifts == 4
    np.testing.assert_allclose(loaded.scores(x)[0], model.scores(x)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bad", [-1, 25, "2", True, 1.5])
def test_test_time_shifts_out_of_range_are_refused(bad):
    with pytest.raises(ConfigError, match="test_time_shifts"):
        ClassicSpec.from_dict("bad", {"features": {"name": "color"},
                                      "classifier": {"type": "linear-svm"}, "test_time_shifts": bad})


def test_rows_averaged_across_matrices_must_be_the_same_rows():
    from cvpipe.classifiers.chunks import Mean, materialize

    X, y = np.arange(24, dtype=np.float32).reshape(6, 4), np.arange(6)
    mean = Mean([ArrayChunks(X, y, rows=4), ArrayChunks(3 * X, y, rows=4)])
    np.testing.assert_array_equal(materialize(mean)[0], 2 * X)
    with pytest.raises(ValueError, match="same rows"):
        Mean([ArrayChunks(X, y, rows=4), ArrayChunks(X, y, rows=3)])  # other blocks
    with pytest.raises(ValueError, match="same rows"):
        materialize(Mean([ArrayChunks(X, y, rows=4), ArrayChunks(X, y[::-1].copy(), rows=4)]))


def _store_size(path):
    manifest = json.loads((path / "manifest.json").read_text())
    return manifest["n"] * (manifest["d"] * 4 + 8)


@pytest.mark.parametrize("options", [
    {"test_time_shifts": 4},
    {"augment_flip": True, "augment_shifts": 2, "test_time_shifts": 2},
])
def test_what_a_fit_will_store_is_known_before_its_first_store(tiny, tmp_path, options, monkeypatch):
    # the disk check adds up the stores a fit will write: exactly those it writes, each once
    from pathlib import Path

    import cvpipe.classifiers.training as training
    from cvpipe.featurestore.dataset import learned_extractor, missing_store_bytes

    store = StoreSettings(root=tmp_path, progress=False)
    features = {"name": "patches", "params": {**PATCHES["params"], "flip_invariant": False}}
    spec = ClassicSpec.from_dict("aug", {"features": features, **options,
                                         "classifier": {"type": "linear-svm", "params": {"C": 0.01}}})
    learned = learned_extractor(tiny, spec.features, store)
    planned = missing_store_bytes(tiny, spec.features, learned, store, spec.stored_splits(refit=True))
    seen = []
    monkeypatch.setattr(training, "check_free", lambda path, n, *a: seen.append(n))
    fit = fit_classic(tiny, spec, progress=False, store=store)
    assert seen == [planned]
    assert planned == sum(_store_size(Path(url)) for url in fit.features["stores"])
    # once they are written, a second fit needs nothing more
    assert missing_store_bytes(tiny, spec.features, learned, store, spec.stored_splits(True)) == 0
    store.force = True  # made again: what they hold now is freed first
    assert missing_store_bytes(tiny, spec.features, learned, store, spec.stored_splits(True)) == 0


def test_a_fit_whose_stores_do_not_fit_on_the_disk_is_refused_before_writing_any(
        tiny, tmp_path, monkeypatch, capsys):
    import cvpipe.storage

    monkeypatch.setattr(cvpipe.storage, "free_bytes", lambda path: 1000)
    store = StoreSettings(root=tmp_path, progress=False)
    with pytest.raises(cvpipe.storage.StorageError,
                       match=r"p: its feature stores need [\d.]+ KB more on the disk of .*features "
                             r"\(1.0 KB free\); free some \(cvpipe store clear\)"):
        fit_classic(tiny, _spec("p", {"name": "hog"}), progress=False, store=store)
    assert list_stores(tmp_path) == []  # nothing written
    monkeypatch.undo()
    fit_classic(tiny, _spec("p", {"name": "hog"}), progress=False, store=store)
    monkeypatch.setattr(cvpipe.storage, "free_bytes", lambda path: 0)
    # every store there already: another classifier on them needs no more disk
    assert fit_classic(tiny, _spec("p", {"name": "hog"}, {"type": "mlp", "params": {
        "hidden_sizes": [8], "max_epochs": 2}}), progress=False, store=store).features["status"] == "reused"
