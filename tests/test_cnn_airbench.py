"""The airbench recipe: its network, whitening, lookahead, flips, TTA, recipe presets, and a
tiny training run that resumes exactly and saves/loads like any CNN (all on the CPU)."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cvpipe.cnn import CNNConfig, train_cnn
from cvpipe.cnn.config import RECIPES
from cvpipe.cnn.data import alternating_flip
from cvpipe.cnn.infer import logits
from cvpipe.cnn.net import AirbenchNet, NetConfig, build_net
from cvpipe.cnn.schedule import (
    Lookahead,
    lookahead_decay,
    lr_factor,
    make_optimizer,
    set_whiten_bias_rate,
)
from cvpipe.cnn.train import TrainingError
from cvpipe.data import load_cifar10
from cvpipe.errors import ConfigError
from cvpipe.models import CNNPipeline, load_model
from tests import synthetic

TINY = CNNConfig.from_dict({"recipe": "airbench", "width": 4, "batch_size": 16, "epochs": 3,
                            "device": "cpu", "eval_batch_size": 64})


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_recipe_fills_what_was_not_given_and_explicit_values_win():
    cfg = CNNConfig.from_dict({"recipe": "airbench", "momentum": 0.9})
    assert cfg.arch == "airbench" and cfg.lookahead and cfg.alternate_flip and cfg.tta == 2
    assert cfg.momentum == 0.9 and cfg.schedule == "triangle"
    assert CNNConfig.from_dict({"recipe": "resnet"}) == CNNConfig()
    with pytest.raises(ConfigError, match="recipe must be one of"):
        CNNConfig.from_dict({"recipe": "fastest"})
    with pytest.raises(ConfigError, match="tta must be"):
        CNNConfig(tta=3)
    # a pipeline's run option: the recipe fills every setting the pipeline did not choose
    pipeline = CNNPipeline("cnn", CNNConfig(time_budget=60)).configure({"recipe": "airbench"})
    assert pipeline.config.arch == "airbench" and pipeline.config.time_budget == 60
    # and back: a pipeline declared with the airbench recipe, run with the resnet one
    shipped = CNNPipeline.from_table("cnn", {"options": {"recipe": "airbench", "seed": 3}})
    back = shipped.configure({"recipe": "resnet"})
    assert back.config == CNNConfig(seed=3)
    assert shipped.configure({"momentum": 0.8}).config.arch == "airbench"
    assert set(RECIPES["airbench"]) <= set(CNNConfig().to_dict())


def test_resolved_airbench_defaults_per_device():
    cpu = CNNConfig.from_dict({"recipe": "airbench"}).resolved(torch.device("cpu"))
    assert (cpu.width, cpu.batch_size, cpu.epochs, cpu.lr) == (32, 1024, 9.9, 1.5)
    # with a budget: the clock decides on a CPU; on a GPU the 9.9 epochs, the budget only limits
    budget = CNNConfig.from_dict({"recipe": "airbench", "time_budget": 900})
    assert budget.resolved(torch.device("cpu")).epochs is None
    assert budget.resolved(torch.device("cuda")).epochs == 9.9
    assert CNNConfig(time_budget=900).resolved(torch.device("cuda")).epochs is None
    half = CNNConfig.from_dict({"recipe": "airbench", "batch_size": 512}).resolved(torch.device("cpu"))
    assert half.lr == pytest.approx(0.75)  # linear in the batch size
    net = cpu.net_config(10)
    assert net.arch == "airbench" and net.widths == (32, 128, 128) and net.scale == pytest.approx(1 / 9)


def test_network_shapes_dirac_init_and_frozen_parts():
    net = build_net(NetConfig(widths=(8, 16, 16), arch="airbench", activation="gelu", n_classes=7))
    assert isinstance(net, AirbenchNet)
    for size in (32, 28, 9):
        assert net(torch.randn(2, 3, size, size)).shape == (2, 7)
    conv = net.groups[0][4]  # the second conv of the first group: 8 -> 8, the identity
    expected = torch.zeros_like(conv.weight)
    expected[torch.arange(8), torch.arange(8), 1, 1] = 1
    assert torch.equal(conv.weight, expected)
    frozen = {name for name, p in net.named_parameters() if not p.requires_grad}
    assert "whiten.weight" in frozen and "groups.0.2.weight" in frozen  # BN scales stay 1
    assert "whiten.bias" not in frozen and "head.weight" not in frozen
    with pytest.raises(ValueError, match="3 conv groups"):
        NetConfig(widths=(8, 16), arch="airbench")


def test_whitening_layer_decorrelates_the_training_patches():
    torch.manual_seed(0)
    mix = torch.randn(3, 3) + 2 * torch.eye(3)
    x = torch.einsum("ij,njhw->nihw", mix, torch.randn(64, 3, 16, 16))  # correlated channels
    x = x + 0.5 * torch.roll(x, 1, dims=3)  # and correlated neighbours
    net = AirbenchNet(NetConfig(widths=(8, 8, 8), arch="airbench"))
    net.init_whitening(x, eps=1e-9)
    with torch.no_grad():
        z = F.conv2d(x, net.whiten.weight)[:, :12]  # the + half; the - half is its negative
    z = z.permute(0, 2, 3, 1).reshape(-1, 12).double()
    covariance = z.T @ z / len(z)
    torch.testing.assert_close(covariance, torch.eye(12, dtype=torch.float64), atol=2e-3, rtol=0)
    torch.testing.assert_close(net.whiten.weight[12:], -net.whiten.weight[:12])


def test_lookahead_average_triangle_schedule_and_alternating_flips():
    net = torch.nn.Linear(3, 2)
    look = Lookahead(net)
    start = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    look.update(net, 0.75)
    torch.testing.assert_close(net.weight, start + 0.25)  # moved a quarter of the way, copied back
    with torch.no_grad():
        net.weight.add_(1.0)
    look.update(net, 1.0)  # decay 1: the weights become the average
    torch.testing.assert_close(net.weight, start + 0.25)
    assert lookahead_decay(0.0) == 0 and lookahead_decay(1.0) == pytest.approx(0.95**5)

    assert [round(lr_factor("triangle", p, 0.25), 3) for p in (0, 0.25, 1)] == [0.2, 1.0, 0.07]

    x = torch.arange(4 * 2 * 2 * 3, dtype=torch.float32).view(4, 1, 2, 6)
    bits = torch.tensor([True, False, False, True])
    even, odd = alternating_flip(x, bits, 0), alternating_flip(x, bits, 1)
    for i in range(4):  # each image mirrored in exactly one of two consecutive epochs
        mirrored = [torch.equal(e[i], x[i].flip(2)) for e in (even, odd)]
        assert mirrored == [bool(bits[i]), not bits[i]]


def test_bias_learning_rate_scale_and_decay_per_step():
    cfg = CNNConfig.from_dict({"recipe": "airbench", "lr": 0.5, "weight_decay": 0.01})
    net = build_net(cfg.net_config(10))
    opt = make_optimizer(net, cfg)
    weights, biases, whiten_bias = opt.param_groups
    assert weights["lr"] == 0.5 and biases["lr"] == 0.5 * 64
    assert weights["lr"] * weights["weight_decay"] == pytest.approx(biases["lr"] * biases["weight_decay"])
    assert whiten_bias["params"] == [net.whiten.bias]
    set_whiten_bias_rate(opt, 2, cfg)
    assert whiten_bias["lr_scale"] == 1.0
    set_whiten_bias_rate(opt, 3, cfg)  # learns for the first whiten_bias_epochs = 3 epochs only
    assert whiten_bias["lr_scale"] == 0.0
    assert make_optimizer(net, CNNConfig(lr=0.5, weight_decay=0.01)).param_groups[1]["weight_decay"] == 0


def test_tta_level_two_adds_one_pixel_shifts():
    torch.manual_seed(1)
    net = build_net(NetConfig(widths=(4, 8, 8), arch="airbench")).eval()
    images = torch.randint(0, 256, (5, 3, 12, 12), dtype=torch.uint8)
    mean, std = torch.full((1, 3, 1, 1), 120.0), torch.full((1, 3, 1, 1), 60.0)
    x = (images.float() - mean) / std

    def pair(t):
        return (net(t) + net(t.flip(3))) / 2

    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    with torch.no_grad():
        expected = 0.5 * pair(x) + 0.25 * (pair(padded[:, :, :12, :12]) + pair(padded[:, :, 2:, 2:]))
        torch.testing.assert_close(logits(net, images, mean, std, tta=2), expected)
        torch.testing.assert_close(logits(net, images, mean, std, tta=True), pair(x))
        assert not torch.allclose(logits(net, images, mean, std, tta=2), pair(x))


def test_training_learns_repeats_and_resumes_exactly(tmp_path):
    train, val = synthetic.make_images(10, seed=0), synthetic.make_images(4, seed=1)
    result = train_cnn(train, val, TINY, progress=False)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert max(r["val_accuracy"] for r in result.history) >= 0.3  # chance is 0.1

    class Interrupted(Exception):
        pass

    def stop_after_first(record):
        if record["epoch"] == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        train_cnn(train, val, TINY, checkpoint_dir=tmp_path, progress=False, on_epoch_end=stop_after_first)
    assert json.loads((tmp_path / "last.json").read_text())["epoch"] == 1
    resumed = train_cnn(train, val, TINY.replace(resume=True), checkpoint_dir=tmp_path, progress=False)
    for key, value in result.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_airbench_model_saves_loads_and_predicts_identically(tmp_path, monkeypatch):
    from cvpipe.models import cnn as cnn_models

    archive, md5, arrays = synthetic.write_official_archive(tmp_path / "cifar-10-python.tar.gz",
                                                            n_per_class=4)
    dataset = load_cifar10(archive, checksum=f"md5:{md5}", root=tmp_path / "data")
    trained = []
    fit = cnn_models.fit_cnn

    def keep_the_trained_net(*args, **kwargs):
        result, description = fit(*args, **kwargs)
        trained.append(result)
        return result, description

    monkeypatch.setattr(cnn_models, "fit_cnn", keep_the_trained_net)
    meta = CNNPipeline("cnn-air", TINY.replace(epochs=2)).train(dataset, tmp_path / "cnn-air", progress=False)
    assert meta["architecture"]["arch"] == "airbench" and meta["tta"] == 2
    predictor = load_model(tmp_path / "cnn-air")
    test_x, test_y = arrays["test"]
    labels = predictor.predict(test_x)
    assert (labels == test_y).mean() == pytest.approx(meta["metrics"]["test"]["accuracy"], abs=1e-7)
    # the loaded network's logits are the trained one's, image by image
    (result,) = trained
    mean = torch.tensor(result.mean).view(1, -1, 1, 1)
    std = torch.tensor(result.std).view(1, -1, 1, 1)
    direct = logits(result.model, test_x, mean, std, tta=2).cpu().numpy()
    np.testing.assert_allclose(predictor.logits(test_x), direct, rtol=1e-5, atol=1e-5)


def test_speed_probe_uses_full_batches_when_an_epoch_has_fewer_than_six():
    from cvpipe.cnn.run import _probe_batches

    def batches(epoch, steps):  # two batches of 4 per epoch, tagged with their epoch
        for _ in range(steps):
            yield torch.full((4,), float(epoch)), None

    probe = [x for x, _ in _probe_batches(batches, 2)]
    assert len(probe) == 6 and all(len(x) == 4 for x in probe)
    assert [int(x[0]) for x in probe] == [-1, -1, -2, -2, -3, -3]


def test_compiled_net_under_bf16_autocast_has_finite_gradients():
    # torch.compile's backward of amax over ties divided by zero under bf16 autocast: every
    # GPU run (compile + bf16 by default) diverged at its first epoch. The CPU shows it too.
    torch.manual_seed(0)
    net = build_net(NetConfig(widths=(8, 16, 16), blocks=(0, 0, 0), activation="gelu", scale=1 / 9,
                              bn_momentum=0.4, n_classes=10, arch="airbench"))
    x = torch.randn(32, 3, 32, 32)
    net.init_whitening(x)
    compiled = torch.compile(net)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = compiled(x)
    out.float().sum().backward()
    bad = [name for name, p in net.named_parameters()
           if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert bad == []


def test_a_training_split_of_one_class_is_refused():
    x, y = synthetic.make_images(20, classes=["only"], size=16)
    with pytest.raises(TrainingError, match="at least 2"):
        train_cnn((x, y), (x, y), TINY)
