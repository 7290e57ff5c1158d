"""CNN training on tiny synthetic data: learning, resume, early stopping, saved models."""

import json

import numpy as np
import pytest
import torch

from cvpipe.cnn import CNNConfig, train_cnn
from cvpipe.cnn.checkpoint import CheckpointError
from cvpipe.cnn.train import TrainingError
from cvpipe.data import load_cifar10
from cvpipe.models import ArtifactError, CNNPipeline, checkpoint_dir_for, load_model, read_test_scores
from tests import synthetic

TINY = CNNConfig(epochs=3, batch_size=20, width=4, lr=0.2, device="cpu", seed=3, tta=False)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors gain nothing from threads, and a busy shared CPU makes threads wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_data():
    return synthetic.make_images(10, seed=0), synthetic.make_images(4, seed=1)


class Interrupted(Exception):
    pass


def test_a_few_epochs_decrease_the_loss_and_learn(tiny_data):
    train, val = tiny_data
    result = train_cnn(train, val, TINY.replace(epochs=4), progress=False)
    losses = [r["train_loss"] for r in result.history]
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.2
    assert max(r["val_accuracy"] for r in result.history) >= 0.5  # chance is 0.1
    assert result.history[-1]["lr"] == pytest.approx(0.0, abs=1e-9)  # one-cycle decayed to zero
    assert result.device == torch.device("cpu") and result.stopped == "completed"


def test_resume_after_interruption_equals_uninterrupted_run(tiny_data, tmp_path):
    train, val = tiny_data
    straight = train_cnn(train, val, TINY, checkpoint_dir=tmp_path / "a", progress=False)

    def stop_after_first(record):
        if record["epoch"] == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        train_cnn(train, val, TINY, checkpoint_dir=tmp_path / "b", progress=False,
                  on_epoch_end=stop_after_first)
    assert json.loads((tmp_path / "b" / "last.json").read_text())["epoch"] == 1
    resumed = train_cnn(train, val, TINY.replace(resume=True), checkpoint_dir=tmp_path / "b",
                        progress=False)

    drop_time = [{k: v for k, v in r.items() if k != "seconds"} for r in straight.history]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed.history] == drop_time
    assert resumed.best_epoch == straight.best_epoch
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    # another seed really gives another run (the equality above is not vacuous)
    other = train_cnn(train, val, TINY.replace(seed=4, epochs=1), progress=False)
    assert not torch.equal(other.model.head.weight, straight.model.head.weight)

    # a finished checkpoint resumes to the same model without training again
    again = train_cnn(train, val, TINY.replace(resume=True), checkpoint_dir=tmp_path / "a", progress=False,
                      on_epoch_end=lambda r: pytest.fail("trained again"))
    assert torch.equal(again.model.head.weight, straight.model.head.weight)
    with pytest.raises(CheckpointError, match="lr: 0.2 -> 0.1"):
        train_cnn(train, val, TINY.replace(resume=True, lr=0.1), checkpoint_dir=tmp_path / "a",
                  progress=False)


class _Clock:
    """A clock that moves 10 ms each time it is read: training's time budget on it does not
    depend on how loaded the machine is."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 0.01
        return self.now


def test_time_budget_ends_training_in_time_with_the_rate_decayed(tiny_data, monkeypatch):
    import types

    import cvpipe.cnn.train as train_module

    train, val = tiny_data
    clock = _Clock()
    monkeypatch.setattr(train_module, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    # (no early stopping: tiny data stops improving long before the budget ends)
    result = train_cnn(train, val, TINY.replace(epochs=10_000, time_budget=3.0, patience=10_000),
                       progress=False)
    assert result.stopped == "completed"
    # stops at the budget, by the training's clock (its 10 ms ticks summed in floating point:
    # the 300th is 2.99999999999998)
    assert 3.0 - 1e-9 <= result.train_seconds < 3.0 + 0.5
    assert 1 <= len(result.history) < 10_000 and result.plan["time_budget"] == 3.0
    # The schedule follows the clock: the rate decays as the budget is spent, and the last
    # epoch's rate is the end of the schedule's decay.
    rates = [h["lr"] for h in result.history]
    peak = rates.index(max(rates))
    assert all(a >= b for a, b in zip(rates[peak:], rates[peak + 1:], strict=False))
    assert rates[-1] < 0.05 * TINY.lr


def test_corrupt_checkpoint_is_refused(tiny_data, tmp_path):
    train, val = tiny_data
    train_cnn(train, val, TINY.replace(epochs=1), checkpoint_dir=tmp_path, progress=False)
    (last,) = tmp_path.glob("last-*.safetensors")
    last.write_bytes(last.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="does not match"):
        train_cnn(train, val, TINY.replace(epochs=1, resume=True), checkpoint_dir=tmp_path, progress=False)
    # an edited record: another shape, a path out of the folder, a missing part; each refused
    # with what to do, nothing read from outside the folder
    index = json.loads((tmp_path / "last.json").read_text())
    (tmp_path.parent / "elsewhere.safetensors").write_bytes(last.read_bytes())
    for record, message in (([1, 2], "not a cvpipe CNN checkpoint"),
                            ({**index, "files": {"last": ["../elsewhere.safetensors", "0" * 64]}},
                             "not a file of its own folder"),
                            ({**index, "files": {}}, "incomplete")):
        (tmp_path / "last.json").write_text(json.dumps(record))
        with pytest.raises(CheckpointError, match=message) as refused:
            train_cnn(train, val, TINY.replace(epochs=1, resume=True), checkpoint_dir=tmp_path,
                      progress=False)
        assert f"delete {tmp_path} to start afresh" in str(refused.value)


def test_early_stopping_and_other_recipe_options(tiny_data):
    train, _ = tiny_data
    one = (train[0][:1], train[1][:1])  # one validation image: accuracy can rise at most once
    result = train_cnn(train, one, TINY.replace(epochs=8, patience=1, optimizer="adamw", lr=3e-3,
                                                schedule="plateau", cutout=8, grad_clip=1.0, tta=True),
                       progress=False)
    assert result.stopped == "early_stopping" and len(result.history) <= 3
    assert all(np.isfinite(r["train_loss"]) for r in result.history)


def test_divergence_stops_with_a_clear_error(tiny_data):
    train, val = tiny_data
    with pytest.raises(TrainingError, match="diverged.*lower the learning rate"):
        train_cnn(train, val, TINY.replace(epochs=1, lr=1e30, label_smoothing=0.0), progress=False)


@pytest.fixture
def tiny_cifar(tmp_path):
    archive, md5, arrays = synthetic.write_official_archive(tmp_path / "cifar-10-python.tar.gz",
                                                            n_per_class=4)
    return load_cifar10(archive, checksum=f"md5:{md5}"), arrays


@pytest.mark.parametrize("amp", [False, True], ids=["float32", "bfloat16"])
def test_trained_model_saves_loads_and_predicts_identically(tiny_cifar, tmp_path, amp):
    """Trained in bfloat16 or not, the recorded figures are the saved model's (float32)."""
    dataset, arrays = tiny_cifar
    model_dir = tmp_path / "models" / "cnn-tiny"
    meta = CNNPipeline("cnn-tiny", TINY.replace(epochs=2, tta=True, amp=amp)).train(
        dataset, model_dir, progress=False)
    assert checkpoint_dir_for(model_dir).joinpath("last.json").is_file()
    assert {p.name for p in model_dir.iterdir()} == {"model.json", "weights.safetensors", "curves.png",
                                                     "test_scores.safetensors"}
    assert meta["kind"] == "cnn" and meta["input_size"] == [32, 32] and meta["features"] is None
    assert set(meta["metrics"]) == {"train", "val", "test"} and meta["metrics"]["test"]["n"] == 40
    assert meta["selection"]["best_epoch"] in (1, 2) and len(meta["history"]) == 2
    assert meta["dataset"]["checksum"] == dataset.checksum and meta["device"] == "cpu"

    predictor = load_model(model_dir)
    test_x, test_y = arrays["test"]
    probs, kind = predictor.scores(test_x)
    assert kind == "probability" and probs.shape == (40, 10)
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
    labels = predictor.predict(test_x)
    assert labels.dtype == np.int64 and np.array_equal(labels, probs.argmax(1))
    # the loaded model scores the test split exactly as the trained one did
    assert (labels == test_y).mean() == pytest.approx(meta["metrics"]["test"]["accuracy"], abs=1e-7)
    recorded = read_test_scores(model_dir, meta, (40, 10))  # the scores a report reads back
    np.testing.assert_allclose(recorded, probs, rtol=1e-4, atol=1e-6)
    loss = -np.log(probs[np.arange(40), test_y]).mean()
    # (bfloat16 scores would be 2e-5 off)
    assert loss == pytest.approx(meta["metrics"]["test"]["loss"], rel=1e-6)
    assert np.array_equal(load_model(model_dir).predict(test_x[:7]), labels[:7])  # batching-independent
    with pytest.raises(ValueError, match="uint8"):
        predictor.predict(test_x.astype(np.float32))

    # a tampered weights file is refused before anything is read
    weights = model_dir / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum differs"):
        load_model(model_dir)


def test_weights_that_do_not_fit_the_architecture_fail_clearly(tiny_cifar, tmp_path):
    dataset, _ = tiny_cifar
    model_dir = tmp_path / "models" / "cnn-arch"
    CNNPipeline("cnn-arch", TINY.replace(epochs=1)).train(dataset, model_dir, progress=False)
    meta_path = model_dir / "model.json"
    meta = json.loads(meta_path.read_text())
    written = meta_path.read_text()
    meta_path.write_text(json.dumps({**meta, "classes": ["a", "b", "c"]}))
    with pytest.raises(ArtifactError, match="lists 3 classes, its network scores 10"):
        load_model(model_dir)
    meta_path.write_text(written)
    meta["architecture"]["widths"] = [8, 16, 32, 64]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="do not fit model.json's architecture"):
        load_model(model_dir)
    # a hostile architecture: checked against the weights' header before anything is built
    # (4,096 channels, 16 blocks a stage: 38 billion parameters)
    import resource

    meta["architecture"].update(widths=[4096] * 8, blocks=[16] * 8)
    meta_path.write_text(json.dumps(meta))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ArtifactError, match="do not fit model.json's architecture"):
        load_model(model_dir)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # kB
    for bad in ({"widths": [10 ** 6] * 4}, {"widths": "abc"}, {"blocks": [True] * 4}, {"n_classes": 0},
                {"scale": "1"}, {"widths": [8] * 9, "blocks": [0] * 9}):
        meta["architecture"].update({"widths": [8, 16, 32, 64], "blocks": [0, 1, 0, 1], **bad})
        meta_path.write_text(json.dumps(meta))
        with pytest.raises(ArtifactError, match="no valid CNN architecture"):
            load_model(model_dir)
        meta["architecture"].update(n_classes=10, scale=0.125)
