"""CNN building blocks: config, device choice, network, augmentation, schedules, checkpoints."""

import json
import math

import numpy as np
import pytest
import torch

from cvpipe.cli import build_parser
from cvpipe.cnn import CNNConfig, NetConfig, ResNet
from cvpipe.cnn.checkpoint import load_checkpoint, save_checkpoint
from cvpipe.cnn.data import augment, channel_stats, random_cutout, random_flip, random_translate, to_device
from cvpipe.cnn.schedule import lr_factor, make_optimizer
from cvpipe.cnn.train import _plan, _plateau_step
from cvpipe.device import resolve_device
from cvpipe.errors import ConfigError
from cvpipe.models import CNNPipeline
from cvpipe.models.cli import _run_options


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors gain nothing from threads, and a busy shared CPU makes threads wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_config_from_dict_accepts_toml_style_keys_and_rejects_unknown():
    cfg = CNNConfig.from_dict({"time-budget": 900, "optimizer": "adamw", "blocks": [0, 1, 1, 1]})
    assert cfg.time_budget == 900 and cfg.optimizer == "adamw" and cfg.blocks == (0, 1, 1, 1)
    with pytest.raises(ConfigError, match="unknown key.*learning_rate"):
        CNNConfig.from_dict({"learning_rate": 0.1})
    with pytest.raises(ConfigError, match="optimizer"):
        CNNConfig.from_dict({"optimizer": "lbfgs"})
    with pytest.raises(ConfigError):
        CNNConfig.from_dict({"epochs": "ten"})
    assert CNNConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("key, value, message", [
    ("flip", "no", "flip must be true or false, not 'no'"),  # a string would read as true
    ("nesterov", 1, "nesterov must be true or false"), ("batch_size", 64.5, "whole number"),
    ("batch_size", True, "whole number"), ("epochs", float("inf"), "finite number"),
    ("lr", "nan", "lr must be a finite number or absent"), ("blocks", ["a", 1, 0, 1], "blocks"),
    ("optimizer", 3, "optimizer must be a string"), ("seed", -1, "seed must be a non-negative")])
def test_cnn_config_refuses_values_of_the_wrong_type(key, value, message):
    with pytest.raises(ConfigError, match=message):
        CNNConfig.from_dict({key: value})


def test_cnn_config_takes_numbers_of_any_kind_where_they_fit():
    cfg = CNNConfig.from_dict({"epochs": 5, "lr": 1, "tta": True, "batch_size": np.int64(64),
                               "amp": None, "blocks": [0, 1, 0, 1]})
    assert cfg.epochs == 5 and cfg.batch_size == 64 and cfg.blocks == (0, 1, 0, 1)


def test_command_line_options_override_a_config_file():
    toml_table = {"options": {"optimizer": "adamw", "epochs": 30, "tta": True}}
    pipeline = CNNPipeline.from_table("cnn", toml_table)
    args = build_parser().parse_args(["train", "--pipeline", "cnn", "--time-budget", "900",
                                      "--set", "tta=false", "--set", "seed=3", "--seed", "7"])
    cfg = pipeline.configure(_run_options(args)).config
    assert (cfg.time_budget, cfg.tta, cfg.seed, cfg.optimizer, cfg.epochs) == (900, False, 3, "adamw", 30)
    args = build_parser().parse_args(["train", "--pipeline", "cnn"])
    assert CNNPipeline.from_table("cnn", {}).configure(_run_options(args)).config == CNNConfig()
    with pytest.raises(ConfigError, match="takes no option 'refit'"):
        pipeline.configure(_run_options(build_parser().parse_args(
            ["train", "--pipeline", "cnn", "--no-refit"])))


def test_config_resolves_defaults_per_device_and_optimizer(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    cpu = CNNConfig(optimizer="adamw").resolved(torch.device("cpu"))
    assert (cpu.width, cpu.batch_size, cpu.amp, cpu.epochs) == (16, 256, False, 10.0)
    assert cpu.lr == 2e-3 and cpu.weight_decay == 0.05
    gpu = CNNConfig(time_budget=5).resolved(torch.device("cuda"))
    assert gpu.width == 64 and gpu.amp is True and gpu.channels_last is True
    assert gpu.epochs is None  # planned from the budget
    assert CNNConfig(width=32, lr=0.1).resolved(torch.device("cpu")).width == 32


@pytest.mark.parametrize("units", [True, False])
def test_a_cpu_with_bfloat16_units_trains_in_bfloat16_unless_told_not_to(monkeypatch, units):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: units)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    for recipe in ("resnet", "airbench"):
        assert CNNConfig.from_dict({"recipe": recipe}).resolved(torch.device("cpu")).amp is units
    assert CNNConfig(amp=False).resolved(torch.device("cpu")).amp is False
    assert CNNConfig(amp=True).resolved(torch.device("cpu")).amp is True
    assert CNNConfig(amp=False).resolved(torch.device("cuda")).amp is False


@pytest.mark.parametrize(("amx", "avx512_bf16"), [(True, False), (False, True), (False, False)])
def test_amx_tiles_or_avx512_bf16_count_as_bfloat16_units(monkeypatch, amx, avx512_bf16):
    # AVX512_BF16 alone (an AMD EPYC): the airbench step 0.44 s in bf16 against 0.70 s
    from cvpipe.device import cpu_has_bfloat16_units

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    assert cpu_has_bfloat16_units() is (amx or avx512_bf16)
    assert CNNConfig().resolved(torch.device("cpu")).amp is (amx or avx512_bf16)


def test_auto_device_falls_back_to_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda")


def test_network_shapes_init_and_residual_identity():
    torch.manual_seed(0)
    net = ResNet(NetConfig(widths=(4, 8, 16, 32), blocks=(0, 1, 0, 1), n_classes=7))
    assert net(torch.randn(5, 3, 32, 32)).shape == (5, 7)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    # He (fan-out) initialisation: std = sqrt(2 / (c_out * 9))
    big = convs[-1].weight
    assert big.std().item() == pytest.approx(math.sqrt(2 / (big.shape[0] * 9)), rel=0.1)
    residual_bns = [m.f[-1][-2] for m in net.modules() if m.__class__.__name__ == "Residual"]
    assert len(residual_bns) == 2 and all((bn.weight == 0).all() for bn in residual_bns)
    net = net.to(memory_format=torch.channels_last)  # channels-last gives the same answer
    x = torch.randn(2, 3, 32, 32)
    net.eval()
    torch.testing.assert_close(net(x), net(x.contiguous(memory_format=torch.channels_last)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_augmentations_keep_shape_dtype_device(dtype):
    x = torch.randn(16, 3, 32, 32).to(dtype) + 10  # no zeros before cutout
    g = torch.Generator().manual_seed(0)
    for out in (random_translate(x, 2, g), random_flip(x, g), random_cutout(x, 8, g),
                augment(x, g, translate=4, flip=True, cutout=8)):
        assert out.shape == x.shape and out.dtype == dtype and out.device == x.device


def test_translate_is_a_shift_flip_is_a_mirror_cutout_zeroes_a_square():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    g = torch.Generator().manual_seed(1)
    shifted = random_translate(x, 2, g)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    for i in range(2):
        crops = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(shifted[i], c) for c in crops)
    flips = torch.stack([random_flip(x, g) for _ in range(20)])
    is_same = (flips == x).flatten(2).all(2)
    is_mirror = (flips == x.flip(3)).flatten(2).all(2)
    assert (is_same | is_mirror).all() and is_same.any() and is_mirror.any()
    cut = random_cutout(x + 1, 3, g)
    assert ((cut == 0).sum(dim=(2, 3)) == 9).all()  # every channel of every image: one 3x3 square
    # the same generator seed repeats the augmentation exactly
    a = augment(x, torch.Generator().manual_seed(5), cutout=2)
    b = augment(x, torch.Generator().manual_seed(5), cutout=2)
    assert torch.equal(a, b)


def test_to_device_and_channel_stats():
    images = np.random.default_rng(0).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    t = to_device(images, torch.device("cpu"))
    assert t.shape == (10, 3, 32, 32) and t.dtype == torch.uint8
    assert np.array_equal(t[3, 1].numpy(), images[3, :, :, 1])
    mean, std = channel_stats(images, chunk=3)
    np.testing.assert_allclose(mean, images.reshape(-1, 3).mean(0))
    np.testing.assert_allclose(std, images.reshape(-1, 3).std(0))
    with pytest.raises(ValueError, match="uint8"):
        to_device(images.astype(np.float32), torch.device("cpu"))


def test_lr_schedules():
    assert lr_factor("onecycle", 0.1, 0.2) == pytest.approx(0.5)
    assert lr_factor("onecycle", 0.2, 0.2) == pytest.approx(1.0)
    assert lr_factor("onecycle", 0.6, 0.2) == pytest.approx(0.5)
    assert lr_factor("onecycle", 1.0, 0.2) == 0.0
    assert lr_factor("cosine", 0.6, 0.2) == pytest.approx(0.5)
    assert lr_factor("cosine", 1.0, 0.2) == pytest.approx(0.0)
    assert lr_factor("constant", 0.9, 0.2) == 1.0
    cfg = CNNConfig(schedule="plateau", plateau_patience=1, plateau_factor=0.5)
    plateau = {"scale": 1.0, "best": math.inf, "bad": 0}
    for loss in (1.0, 0.9, 0.95, 0.95, 0.95, 0.8):
        _plateau_step(plateau, loss, cfg)
    assert plateau["scale"] == 0.5 and plateau["best"] == 0.8


def test_time_budget_estimates_steps_from_measured_speed():
    cfg = CNNConfig(time_budget=10).resolved(torch.device("cpu"))
    plan = _plan(cfg, steps_per_epoch=10, n_val=100, measure=lambda: (0.1, 0.5))
    # the clock decides (no step limit); each step costs 0.1 s plus a tenth of a 0.5 s validation,
    # and the last validation is kept out of the budget (as is the time spent measuring)
    assert plan["total_steps"] is None and plan["estimated_steps"] in (62, 63)
    assert plan["epochs"] == plan["estimated_steps"] / 10
    capped = CNNConfig(time_budget=10, epochs=2).resolved(torch.device("cpu"))
    assert _plan(capped, 10, 100, lambda: (0.1, 0.5))["total_steps"] == 20
    fixed = CNNConfig(epochs=2.5).resolved(torch.device("cpu"))
    assert _plan(fixed, 10, 100, lambda: pytest.fail("no measuring without a budget"))["total_steps"] == 25


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop", "adagrad"])
def test_optimizers_step_and_checkpoint_round_trip(name, tmp_path):
    torch.manual_seed(0)
    cfg = CNNConfig(optimizer=name, width=2).resolved(torch.device("cpu"))
    net = ResNet(cfg.net_config(10))
    opt = make_optimizer(net, cfg)
    decay_group, bn_group = opt.param_groups
    assert decay_group["weight_decay"] == cfg.weight_decay and bn_group["weight_decay"] == 0.0
    assert all(p.ndim == 1 for p in bn_group["params"])
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    before = [p.detach().clone() for p in net.parameters()]
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    save_checkpoint(tmp_path, 1, net, opt, {"epoch": 1})
    torch.manual_seed(1)
    net2 = ResNet(cfg.net_config(10))
    opt2 = make_optimizer(net2, cfg)
    state, best = load_checkpoint(tmp_path, net2, opt2)
    assert state == {"epoch": 1} and best is None
    for k, v in net.state_dict().items():
        assert torch.equal(v, net2.state_dict()[k]), k
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert json.dumps(s1["param_groups"]) == json.dumps(s2["param_groups"])
    for idx, values in s1["state"].items():
        for key, value in values.items():
            other = s2["state"][idx][key]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other
