"""The sweep scripts of issue 26 explain themselves and refuse a bad variant before reading any
data (a sweep is an hour of encoding: a typo found after it is an hour lost)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["patch_variants", "scattering_variants"])
def test_help_describes_the_sweep_and_reads_no_data(name, capsys, monkeypatch):
    module = _script(name)
    monkeypatch.setattr(module, "load_cifar10", lambda *a, **k: pytest.fail("data read"))
    with pytest.raises(SystemExit) as stop:
        module.main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "validation split" in out and "VARIANT" in out and "is never read" in out


@pytest.mark.parametrize(("name", "variant", "words"), [
    ("patch_variants", "encoding=nope", "'encoding' parameter"),
    ("patch_variants", "n_centroids=400:x", "numbers above 0"),
    ("patch_variants", "n_centroids=400:-1", "numbers above 0"),
    ("patch_variants", "nope=1", "no component of 'patches' takes a parameter 'nope'"),
    ("scattering_variants", "log:2", "is not log|raw:pool:C"),
    ("scattering_variants", "cubic:2:1e-4", "is not log|raw:pool:C"),
    ("scattering_variants", "raw:-1:1e-4", "is not log|raw:pool:C"),
    ("scattering_variants", "raw:0:0", "is not log|raw:pool:C"),
])
def test_a_bad_variant_is_refused_before_any_data_is_read(name, variant, words, capsys, monkeypatch):
    module = _script(name)
    monkeypatch.setattr(module, "load_cifar10", lambda *a, **k: pytest.fail("data read"))
    with pytest.raises(SystemExit) as stop:
        module.main(["log:2:1e-4" if name == "scattering_variants" else "alpha=0.5", variant])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "bad variant" in err and words in err
