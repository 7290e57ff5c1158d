"""The prediction API through Flask's test client: every endpoint, every bad input, auth.

Models are trained once per test process on the tiny synthetic image folder (see
:func:`api_models_dir`); the other API test modules share them.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import shutil
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cvpipe.features import FeatureSpec
from cvpipe.images import decode
from cvpipe.models import ClassicPipeline, Pipeline, get_pipeline, load_model, register_kind, write_artifact
from service import create_app
from service.registry import ModelRegistry, model_version
from tests import synthetic

SVM, MLP, FAKE, CNN = "tiny-svm", "tiny-mlp", "tiny-fake", "tiny-cnn"
FAKE_KIND = "api-test-fake"
_MODELS: dict[str, Path] = {}


# ----------------------------------------------------------------------------- models

class FakePredictor:
    """A model of a kind the API has never heard of: probabilities from mean colour, 16x16 input."""

    def __init__(self, metadata: dict) -> None:
        self.metadata = metadata
        self.w = np.asarray(metadata["weights"], np.float64)

    def scores(self, images: np.ndarray) -> tuple[np.ndarray, str]:
        assert images.dtype == np.uint8 and images.shape[1:] == (16, 16, 3)
        z = images.reshape(len(images), -1, 3).mean(1) / 255.0 @ self.w
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True), "probability"

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.scores(images)[0].argmax(1)


class FakePipeline(Pipeline):
    """Only what loading a model of a foreign kind needs: the API knows nothing more of it."""

    kind = FAKE_KIND

    @classmethod
    def load(cls, model_dir: Path, meta: dict) -> FakePredictor:
        return FakePredictor(meta)


register_kind(FAKE_KIND, FakePipeline)


def api_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder with a linear SVM and an MLP (HOG+colour), a model of a foreign kind and,
    a tiny CNN; built once per process."""
    if "dir" in _MODELS:
        return _MODELS["dir"]
    import torch

    from cvpipe.data import load_cifar10

    root = tmp_path_factory.mktemp("api-models")
    synthetic.write_image_folder(root / "images", n_train=6, n_test=3)
    ds = load_cifar10(root / "images", root / "data")
    models = root / "models"
    ClassicPipeline.from_table(SVM, {
        "features": {"name": "hog+color"},
        "classifier": {"type": "linear-svm", "params": {"C": 0.1, "max_iter": 100}}}
    ).train(ds, models / SVM, progress=False)
    ClassicPipeline.from_table(MLP, {
        "features": {"name": "hog+color"},
        "classifier": {"type": "mlp", "params": {"hidden_sizes": [32], "max_epochs": 5}}}
    ).train(ds, models / MLP, progress=False)
    rng = np.random.default_rng(0)
    write_artifact(models / FAKE, {"kind": FAKE_KIND, "classes": list(synthetic.CLASSES),
                                   "card": {"family": "fake", "classifier": "mean colour"},
                                   "input_size": [16, 16], "features": None,
                                   "weights": rng.normal(0, 5, (3, 10)).tolist(),
                                   "metrics": {"test": {"accuracy": 0.1}}}, lambda tmp: None)
    # The CNN too: a failure to train it is a failure of this suite, not a reason to skip.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cnn = get_pipeline("cnn").configure(epochs=1, batch_size=20, width=4, device="cpu", seed=0,
                                            tta=False)
        cnn.train(ds, models / CNN, progress=False)
    finally:
        torch.set_num_threads(threads)
    _MODELS["dir"] = models
    return models


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    return api_models_dir(tmp_path_factory)


@pytest.fixture(scope="session")
def registry(models_dir) -> ModelRegistry:
    reg = ModelRegistry(models_dir).load_all()
    reg.warm_up()
    return reg


@pytest.fixture(scope="session")
def local(models_dir) -> dict:
    """The models loaded directly, to compare the API's answers with."""
    return {p.name: load_model(p) for p in models_dir.iterdir() if (p / "model.json").is_file()}


@pytest.fixture
def app(registry, models_dir):
    return create_app({"TESTING": True, "MODELS_DIR": str(models_dir), "API_TOKEN": None}, registry=registry)


@pytest.fixture
def client(app):
    return app.test_client()


# ----------------------------------------------------------------------------- images

def encode(img: np.ndarray | Image.Image, fmt: str = "PNG", **kw) -> bytes:
    im = Image.fromarray(img) if isinstance(img, np.ndarray) else img
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def test_images(n: int = 6, seed: int = 5) -> np.ndarray:
    x, _ = synthetic.make_images(1, seed=seed)
    return x[:n] if n <= len(x) else np.concatenate([x] * (n // len(x) + 1))[:n]


test_images.__test__ = False  # a helper, not a test


def bomb_png(width: int, height: int) -> bytes:
    """A valid black 1-bit PNG of any size, written without ever holding its pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (width + 7) // 8)
    comp = zlib.compressobj(9)
    step = max(1, (1 << 20) // len(row))
    idat = b"".join(comp.compress(row * min(step, height - s)) for s in range(0, height, step))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat + comp.flush())
            + chunk(b"IEND", b""))


def files(*blobs: bytes, names: list[str] | None = None, **fields) -> dict:
    names = names or [f"{i}.png" for i in range(len(blobs))]
    return {"images": [(io.BytesIO(b), n) for b, n in zip(blobs, names, strict=True)], **fields}


def b64(blob: bytes) -> str:
    return base64.b64encode(blob).decode()


def local_labels(model, blobs: list[bytes]) -> list[str]:
    taken = model.input  # the conversion the model records: size, channels, fit policy
    x = np.stack([decode(b, size=taken.size, channels=taken.channels, fit=taken.fit)
                  for b in blobs])
    return [model.metadata["classes"][i] for i in model.predict(x)]


def assert_error(resp, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.data[:500]
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert set(body) >= {"error", "message", "status"} and body["status"] == status
    assert body["message"] and "Traceback" not in resp.get_data(as_text=True)
    if code:
        assert body["error"] == code, body
    return body


def predict(client, model: str = SVM, **kw):
    return client.post(f"/v1/models/{model}/predict", **kw)


# ----------------------------------------------------------------------------- health, models

def test_health_ready_and_model_list(client, local):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["status"] == "ready"
    assert {SVM, MLP, FAKE} <= set(ready.get_json()["models"])

    listed = {m["name"]: m for m in client.get("/v1/models").get_json()["models"]}
    assert set(listed) == set(local)
    svm = listed[SVM]
    meta = local[SVM].metadata
    assert svm["features"] == meta["features"] == FeatureSpec.parse("hog+color").to_dict()
    assert svm["classifier"]["type"] == "linear-svm" and svm["kind"] == "classic"
    assert svm["card"] == {"family": "classic", "features": "hog+color", "classifier": "linear-svm",
                           "description": ""}
    assert svm["classes"] == list(synthetic.CLASSES) and svm["input_size"] == [32, 32]
    assert svm["test_accuracy"] == meta["metrics"]["test"]["accuracy"]
    assert svm["created"] == meta["created"] and svm["score_kind"] == "decision"
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{12}", svm["version"])
    assert listed[MLP]["classifier"]["type"] == "mlp" and listed[MLP]["score_kind"] == "probability"
    assert listed[FAKE]["kind"] == FAKE_KIND and listed[FAKE]["input_size"] == [16, 16]

    detail = client.get(f"/v1/models/{SVM}").get_json()
    assert detail["metrics"]["test"]["accuracy"] == svm["test_accuracy"] and "versions" in detail
    assert_error(client.get("/v1/models/nope"), 404, "unknown_model")


def test_settings_from_environment_then_overrides(monkeypatch):
    from cvpipe.errors import ConfigError
    from service.config import load_settings

    monkeypatch.setenv("CVPIPE_MAX_IMAGES", "7")
    monkeypatch.setenv("CVPIPE_WARMUP", "no")
    monkeypatch.setenv("CVPIPE_API_TOKEN", "")
    s = load_settings({"TOP_K": 3})
    assert (s["MAX_IMAGES"], s["WARMUP"], s["TOP_K"], s["API_TOKEN"]) == (7, False, 3, None)
    assert load_settings({"MAX_IMAGES": 9})["MAX_IMAGES"] == 9
    for env, value in (("CVPIPE_MAX_IMAGES", "many"), ("CVPIPE_MAX_PIXELS", "0"), ("CVPIPE_WARMUP", "maybe")):
        monkeypatch.setenv(env, value)
        with pytest.raises(ConfigError, match=env):
            load_settings()
        monkeypatch.delenv(env)
    with pytest.raises(ConfigError, match="TOP_K"):
        load_settings({"TOP_K": 0})
    # waiting times the threads' waits can take: inf overflowed them (a 500 on every request)
    for env, value in (("CVPIPE_PREDICT_TIMEOUT", "inf"), ("CVPIPE_PREDICT_TIMEOUT", "0"),
                       ("CVPIPE_BODY_TIMEOUT", "nan"), ("CVPIPE_BATCH_LINGER_MS", "1e9")):
        monkeypatch.setenv(env, value)
        with pytest.raises(ConfigError, match=f"{env}=.*must be a number from"):
            load_settings()
        monkeypatch.delenv(env)
    assert load_settings({"BODY_TIMEOUT": 0})["BODY_TIMEOUT"] == 0  # 0: the deadline off
    with pytest.raises(ConfigError, match="setting PREDICT_TIMEOUT=inf"):
        load_settings({"PREDICT_TIMEOUT": float("inf")})
    # a blank token would lock every client out; a file's newline is not part of the token
    monkeypatch.setenv("CVPIPE_API_TOKEN", " \n")
    with pytest.raises(ConfigError, match="CVPIPE_API_TOKEN is blank"):
        load_settings()
    monkeypatch.setenv("CVPIPE_API_TOKEN", "s3cret-token\n")
    assert load_settings()["API_TOKEN"] == "s3cret-token"


def test_version_changes_with_model_json():
    a = model_version(b'{"a": 1}', "2025-03-04T05:06:07+00:00")
    assert a.startswith("20250304T050607Z-") and a != model_version(b'{"a": 2}', "2025-03-04T05:06:07+00:00")


def test_readyz_is_503_without_models_and_broken_models_are_skipped(tmp_path, models_dir, caplog):
    empty = create_app({"MODELS_DIR": str(tmp_path / "none")}).test_client()
    resp = empty.get("/readyz")
    assert resp.status_code == 503 and resp.get_json()["status"] == "not_ready"
    assert empty.get("/healthz").status_code == 200
    assert_error(predict(empty, data=encode(test_images(1)[0]), content_type="image/png"), 404)

    folder = tmp_path / "models"
    shutil.copytree(models_dir / SVM, folder / SVM)
    shutil.copytree(models_dir / SVM, folder / "tampered")
    skops = next((folder / "tampered").glob("classifier.*"))
    skops.write_bytes(skops.read_bytes()[:-10] + b"0123456789")
    (folder / "garbage").mkdir()
    (folder / "garbage" / "model.json").write_text("{not json")
    with caplog.at_level(logging.ERROR):
        app = create_app({"MODELS_DIR": str(folder)})
    assert "tampered" in caplog.text and "garbage" in caplog.text
    c = app.test_client()
    assert c.get("/readyz").status_code == 200
    body = c.get("/v1/models").get_json()
    assert [m["name"] for m in body["models"]] == [SVM]
    reasons = {u["name"]: u["reason"] for u in body["unavailable"]}
    assert set(reasons) == {"tampered", "garbage"} and "checksum" in reasons["tampered"]
    assert str(tmp_path) not in json.dumps(body)  # no server paths leak
    refused = predict(c, model="tampered", data=encode(test_images(1)[0]), content_type="image/png")
    assert_error(refused, 404, "unknown_model")
    assert "failed to load" in refused.get_json()["message"]  # not a typo: the client is told
    assert "failed to load" not in c.get("/v1/models/nope").get_json()["message"]


# ----------------------------------------------------------------------------- predict

def test_predict_multipart_json_and_raw_agree_with_the_model(client, local):
    x = test_images(6)
    blobs = [encode(img) for img in x]
    expected = local_labels(local[SVM], blobs)

    resp = predict(client, data=files(*blobs), content_type="multipart/form-data")
    assert resp.status_code == 200, resp.data
    body = resp.get_json()
    assert body["model"]["name"] == SVM and body["model"]["kind"] == "classic"
    versions = {m["name"]: m["version"] for m in client.get("/v1/models").get_json()["models"]}
    assert body["model"]["version"] == versions[SVM]
    assert body["score_kind"] == "decision" and "not probabilities" in body["score_note"]
    assert body["top_k"] == 5 and body["timing_ms"]["total"] > 0
    preds = body["predictions"]
    assert [p["index"] for p in preds] == list(range(6)) and [p["name"] for p in preds] == [
        f"{i}.png" for i in range(6)]
    assert [p["label"] for p in preds] == expected
    scores, _ = local[SVM].scores(x)
    for p, row in zip(preds, scores, strict=True):
        assert len(p["top_k"]) == 5 and p["top_k"][0]["label"] == p["label"]
        values = [c["score"] for c in p["top_k"]]
        assert values == sorted(values, reverse=True)
        assert values[0] == pytest.approx(row.max(), abs=1e-5)
        assert [c["class_index"] for c in p["top_k"]] == list(np.argsort(-row, kind="stable")[:5])

    resp = predict(client, json={"images": [b64(b) for b in blobs[:3]] + [
        "data:image/png;base64," + b64(blobs[3])]})
    assert [p["label"] for p in resp.get_json()["predictions"]] == expected[:4]
    assert resp.get_json()["predictions"][0]["name"] == "images[0]"
    # line-wrapped (MIME) and URL-safe base64
    wrapped = "\n".join(re.findall(".{1,76}", b64(blobs[4])))
    urlsafe = base64.urlsafe_b64encode(blobs[5]).decode().rstrip("=")
    resp = predict(client, json={"images": [wrapped, urlsafe]})
    assert [p["label"] for p in resp.get_json()["predictions"]] == expected[4:]

    resp = predict(client, data=blobs[2], content_type="image/png")
    assert resp.get_json()["predictions"][0]["label"] == expected[2]


def test_probabilities_and_top_k(client, local):
    blob = encode(test_images(1)[0])
    body = predict(client, model=MLP, data=files(blob), query_string={"top_k": 10}).get_json()
    assert body["score_kind"] == "probability" and "score_note" not in body and body["top_k"] == 10
    probs = [c["score"] for c in body["predictions"][0]["top_k"]]
    assert sum(probs) == pytest.approx(1.0, abs=1e-4) and all(0 <= p <= 1 for p in probs)
    assert body["predictions"][0]["label"] == local_labels(local[MLP], [blob])[0]

    def k_of(**kw):
        resp = predict(client, model=MLP, **kw)
        assert resp.status_code == 200, resp.data
        return len(resp.get_json()["predictions"][0]["top_k"])

    assert k_of(data=files(blob, top_k="2"), content_type="multipart/form-data") == 2
    assert k_of(json={"images": [b64(blob)], "top_k": 3}) == 3
    assert k_of(json={"images": [b64(blob)], "top_k": 1}, query_string={"top_k": 7}) == 1  # body wins
    assert k_of(data=blob, content_type="image/png", query_string={"top_k": 999}) == 10  # all classes
    for bad in (0, -1, 1001, "x", 2.5, True, "3.0"):
        resp = predict(client, model=MLP, json={"images": [b64(blob)], "top_k": bad})
        assert_error(resp, 400, "invalid_option")
    assert_error(predict(client, data=blob, content_type="image/png", query_string={"top_k": "abc"}), 400)


def test_any_model_kind_and_its_input_size(client, local):
    big = np.kron(test_images(2), np.ones((1, 5, 5, 1), np.uint8))  # 160x160, resized to 16x16
    blobs = [encode(img) for img in big]
    body = predict(client, model=FAKE, data=files(*blobs)).get_json()
    assert body["model"]["kind"] == FAKE_KIND and body["score_kind"] == "probability"
    assert [p["label"] for p in body["predictions"]] == local_labels(local[FAKE], blobs)


def test_cnn_model(client, local):
    blobs = [encode(img) for img in test_images(4)]
    body = predict(client, model=CNN, data=files(*blobs)).get_json()
    assert body["model"]["kind"] == "cnn" and body["score_kind"] == "probability"
    assert [p["label"] for p in body["predictions"]] == local_labels(local[CNN], blobs)
    assert_error(client.post("/v1/features", json={"images": [b64(blobs[0])], "model": CNN}), 400,
                 "no_features")


def _exif_jpeg(stored: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored, "JPEG", quality=95, exif=exif.tobytes())


@pytest.mark.parametrize("case", ["png", "jpeg", "bmp", "gif-palette", "webp", "tiff", "gray", "gray-16bit",
                                  "rgba", "palette-transparency", "large", "non-square"])
def test_image_formats_and_modes(client, local, case):
    img = test_images(1, seed=7)[0]
    rgba = np.dstack([img, np.where(np.arange(32)[None, :] < 16, 255, 40).repeat(32, 0).astype(np.uint8)])
    blob = {
        "png": lambda: encode(img),
        "jpeg": lambda: encode(img, "JPEG", quality=90),
        "bmp": lambda: encode(img, "BMP"),
        "gif-palette": lambda: encode(Image.fromarray(img).quantize(64), "GIF"),
        "webp": lambda: encode(img, "WEBP", lossless=True),
        "tiff": lambda: encode(img, "TIFF"),
        "gray": lambda: encode(Image.fromarray(img).convert("L")),
        "gray-16bit": lambda: encode(Image.fromarray(img[..., 1].astype(np.uint16) * 257)),
        "rgba": lambda: encode(Image.fromarray(rgba, "RGBA")),
        "palette-transparency": lambda: encode(Image.fromarray(img).quantize(16), "PNG", transparency=0),
        "large": lambda: encode(np.kron(img, np.ones((40, 30, 1), np.uint8))),
        "non-square": lambda: encode(img[:, 4:28]),
    }[case]()
    resp = predict(client, model=MLP, data=files(blob), content_type="multipart/form-data")
    assert resp.status_code == 200, resp.data
    label = resp.get_json()["predictions"][0]["label"]
    assert label == local_labels(local[MLP], [blob])[0]
    x = decode(blob, size=(32, 32))
    if case in ("png", "bmp", "webp", "tiff"):
        assert np.array_equal(x, img)  # lossless: the model sees exactly the pixels sent
    if case == "gray-16bit":
        assert Image.open(io.BytesIO(blob)).mode.startswith("I")  # really 16-bit on disk
        assert abs(int(x[0, 0, 0]) - int(img[0, 0, 1])) <= 1 and (x[..., 0] == x[..., 2]).all()
    if case == "rgba":  # alpha composited on white, not dropped
        assert (x[:, 16:] > img[:, 16:].astype(int) - 1).all() and (x[:, 16:] != img[:, 16:]).any()


def test_exif_orientation_is_applied(client, local):
    # Stripes of class 0 run one way; stored transposed, EXIF orientation 6 turns them back.
    img = test_images(1, seed=3)[0]
    stored = np.ascontiguousarray(np.rot90(img, 1))  # what a camera would have written
    blob = _exif_jpeg(stored, 6)
    upright = decode(blob)
    raw = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))
    assert upright.shape == raw.shape and not np.array_equal(upright, raw)
    assert np.abs(upright.astype(int) - img).mean() < np.abs(raw.astype(int) - img).mean()

    feats = client.post("/v1/features", data=files(blob), content_type="multipart/form-data").get_json()
    from cvpipe.features import make_features

    f = make_features("hog+color")
    got = np.asarray(feats["results"][0]["vector"], np.float32)
    np.testing.assert_allclose(got, f.transform(upright[None])[0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, f.transform(raw[None])[0], atol=1e-3)  # the orientation mattered
    body = predict(client, data=files(blob)).get_json()
    assert body["predictions"][0]["label"] == local_labels(local[SVM], [blob])[0]


# ----------------------------------------------------------------------------- bad input

def test_bad_inputs_get_clear_4xx_json_and_the_server_keeps_serving(client, local):
    good = encode(test_images(1)[0])
    truncated_png = good[: len(good) // 2]
    truncated_jpeg = encode(test_images(1)[0], "JPEG")[:300]
    cases = [
        (dict(data=b""), 400, "empty_body"),
        (dict(data=b"", content_type="application/json"), 400, "empty_body"),
        (dict(data=b"   ", content_type="application/json"), 400, "empty_body"),
        (dict(data=b"", content_type="image/png"), 400, "empty_body"),
        (dict(data={}, content_type="multipart/form-data"), 400, "no_images"),
        (dict(data={"top_k": "3"}, content_type="multipart/form-data"), 400, "no_images"),
        (dict(data=files(b"", names=["empty.png"])), 400, "bad_image"),
        (dict(data=files(b"hello, I am text", names=["notes.txt"])), 400, "bad_image"),
        (dict(data=files(good, truncated_png, names=["ok.png", "cut.png"])), 400, "bad_image"),
        (dict(data=files(truncated_jpeg, names=["cut.jpg"])), 400, "bad_image"),
        (dict(data=b"%PDF-1.4 not an image", content_type="application/octet-stream"), 400, "bad_image"),
        (dict(json={"images": ["!!not base64!!"]}), 400, "invalid_base64"),
        (dict(json={"images": ["abcde"]}), 400, "invalid_base64"),  # 5 characters: impossible
        (dict(json={"images": ["data:image/png,rawtext"]}), 400, "invalid_base64"),
        (dict(data=b'{"images": [', content_type="application/json"), 400, "malformed_json"),
        (dict(data=b"\xff\xfe{}", content_type="application/json"), 400, "malformed_json"),
        (dict(json=["not", "an", "object"]), 400, "invalid_request"),
        (dict(json={"images": "abc"}), 400, "invalid_request"),
        (dict(json={"images": [1, 2]}), 400, "invalid_request"),
        (dict(json={"images": []}), 400, "no_images"),
        (dict(json={}), 400, "no_images"),
        (dict(json={"images": [b64(good)], "topk": 3}), 400, "unknown_field"),
        (dict(data=good, content_type="image/png", query_string={"topk": 3}), 400, "unknown_field"),
        (dict(data=files(good, extra="1"), content_type="multipart/form-data"), 400, "unknown_field"),
        (dict(data={"images": "text, not a file"}, content_type="multipart/form-data"), 400, "bad_image"),
        (dict(data=b"--x\r\nContent-Disposition: form-data; name=images\r\n\r\nabc",
              content_type="multipart/form-data; boundary=x"), 400, "malformed_multipart"),
        (dict(data=b"no boundary here", content_type="multipart/form-data"), 400, "malformed_multipart"),
        (dict(data={"image": (io.BytesIO(good), "a.png")}, content_type="multipart/form-data"), 400,
         "unknown_field"),
        (dict(data=b"hello", content_type="text/plain"), 415, "unsupported_media_type"),
        (dict(data=b"a=1", content_type="application/x-www-form-urlencoded"), 415, "unsupported_media_type"),
        (dict(data=b"<xml/>", content_type="application/xml"), 415, "unsupported_media_type"),
        (dict(data=b"raw bytes"), 415, "unsupported_media_type"),  # a body with no Content-Type
        (dict(data=files(bomb_png(20_000, 20_000))), 413, "image_too_large"),  # over Pillow's own guard
        (dict(data=files(bomb_png(8_000, 6_000))), 413, "image_too_large"),  # over MAX_PIXELS (40 M)
    ]
    for kwargs, status, code in cases:
        body = assert_error(predict(client, **kwargs), status, code)
        if code == "bad_image":
            assert "index" in body["details"]
    body = assert_error(predict(client, data=files(good, truncated_png, names=["ok.png", "cut.png"])), 400)
    assert body["details"] == {"index": 1, "name": "cut.png"} and "cut.png" in body["message"]

    assert_error(predict(client, model="no-such-model", data=files(good)), 404, "unknown_model")
    assert_error(client.get("/v1/models/tiny-svm/predict"), 405, "method_not_allowed")
    assert client.get("/v1/models/tiny-svm/predict").headers["Allow"]
    assert_error(client.get("/nowhere"), 404, "not_found")
    # still serving, correctly
    resp = predict(client, data=files(good))
    assert resp.status_code == 200
    assert resp.get_json()["predictions"][0]["label"] == local_labels(local[SVM], [good])[0]


def test_limits(registry, models_dir):
    app = create_app({"TESTING": True, "MODELS_DIR": str(models_dir), "MAX_IMAGES": 3,
                      "MAX_CONTENT_LENGTH": 20_000, "MAX_PIXELS": 100 * 100,
                      "MAX_REQUEST_PIXELS": 3 * 64 * 64}, registry=registry)
    c = app.test_client()
    small = encode(test_images(1)[0])
    assert predict(c, data=files(small, small, small)).status_code == 200
    body = assert_error(predict(c, data=files(small, small, small, small)), 413, "too_many_images")
    assert body["details"] == {"images": 4, "limit": 3}
    assert_error(predict(c, json={"images": [b64(small)] * 4}), 413, "too_many_images")
    noise = np.random.default_rng(0).integers(0, 255, (120, 120, 3), dtype=np.uint8)
    assert_error(predict(c, data=encode(noise), content_type="image/png"), 413, "payload_too_large")
    assert_error(predict(c, data=files(encode(noise))), 413, "payload_too_large")
    assert_error(predict(c, data=files(encode(np.zeros((101, 100, 3), np.uint8)))), 413, "image_too_large")
    flat64 = encode(np.zeros((64, 64, 3), np.uint8))
    assert predict(c, data=files(flat64, flat64, flat64)).status_code == 200
    body = assert_error(predict(c, data=files(flat64, flat64, encode(np.zeros((65, 64, 3), np.uint8)))),
                        413, "request_too_large")
    assert body["details"]["index"] == 2
    assert predict(c, data=files(small)).status_code == 200


def test_internal_errors_are_generic_json_and_logged(client, registry, monkeypatch, caplog):
    def boom(images):
        raise RuntimeError("secret detail /etc/shadow")

    monkeypatch.setattr(registry.models[MLP].predictor, "scores", boom)
    with caplog.at_level(logging.ERROR):
        resp = predict(client, model=MLP, data=files(encode(test_images(1)[0])))
    body = assert_error(resp, 500, "internal")
    assert "secret" not in resp.get_data(as_text=True) and "RuntimeError" not in body["message"]
    assert "secret detail" in caplog.text and "Traceback" in caplog.text
    assert predict(client, data=files(encode(test_images(1)[0]))).status_code == 200

    # a model returning NaN (or the wrong shape) is an internal error, not a JSON NaN
    monkeypatch.setattr(registry.models[MLP].predictor, "scores",
                        lambda images: (np.full((len(images), 10), np.nan), "probability"))
    assert_error(predict(client, model=MLP, data=files(encode(test_images(1)[0]))), 500, "internal")
    monkeypatch.setattr(registry.models[MLP].predictor, "scores",
                        lambda images: (np.zeros((len(images), 3)), "probability"))
    assert_error(predict(client, model=MLP, data=files(encode(test_images(1)[0]))), 500, "internal")


def test_multipart_parser():
    from service.multipart import MultipartError, parse

    body = (b"preamble\r\n--b\r\nContent-Disposition: form-data; name=\"images\"; filename=\"a.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n\x89PNG--b--\r\n\r\nx\r\n"
            b"--b \r\nContent-Disposition: form-data; name=images\r\n\r\n\r\n"
            b"--b\r\ncontent-disposition: form-data; name=\"top_k\"\r\n\r\n3\r\n--b--\r\nepilogue")
    parts = parse(body, "b", max_parts=10)
    assert [(p.name, p.filename, p.content_type, p.data) for p in parts] == [
        ("images", "a.png", "image/png", b"\x89PNG--b--\r\n\r\nx"),  # '--b' not after CRLF: data
        ("images", None, None, b""),
        ("top_k", None, None, b"3")]
    # an empty file written the way werkzeug does it: no CRLF between headers and delimiter
    assert parse(b"--b\r\nContent-Disposition: form-data; name=x\r\n\r\n--b--", "b", 5)[0].data == b""
    for bad in (b"", b"--b\r\nContent-Disposition: form-data; name=x\r\n\r\ndata",  # no closing
                b"--b\r\n\r\ndata\r\n--b--",  # no headers
                b"--b\r\nContent-Type: text/plain\r\n\r\ndata\r\n--b--",  # no disposition
                b"--b\r\nContent-Disposition: attachment; name=x\r\n\r\nd\r\n--b--",
                b"--b\r\nbroken header\r\n\r\nd\r\n--b--",
                b"--bjunk\r\nContent-Disposition: form-data; name=x\r\n\r\nd\r\n--b--"):
        with pytest.raises(MultipartError):
            parse(bad, "b", max_parts=5)
    with pytest.raises(MultipartError, match="boundary"):
        parse(b"--b--", "", max_parts=5)
    many = b"".join(b"--b\r\nContent-Disposition: form-data; name=x\r\n\r\nd\r\n" for _ in range(7))
    with pytest.raises(MultipartError, match="more than 5 parts"):
        parse(many + b"--b--", "b", max_parts=5)


def test_micro_batcher_batches_concurrent_requests_and_keeps_them_apart():
    import threading

    from service.batching import MicroBatcher

    calls, running, overlap = [], [0], [False]
    gate = threading.Event()

    def fn(images):
        running[0] += 1
        overlap[0] |= running[0] > 1
        calls.append(len(images))
        if len(calls) == 1:
            gate.wait(5)  # hold the first call while the others queue up
        out = images.reshape(len(images), -1)[:, :2].astype(float)
        running[0] -= 1
        return out, "probability"

    batcher = MicroBatcher(fn, max_images=1000)
    results = {}

    def request(i):
        x = np.full((1 + i % 3, 2, 2, 3), i, np.uint8)
        results[i] = batcher(x)

    threads = [threading.Thread(target=request, args=(i,)) for i in range(12)]
    threads[0].start()
    time.sleep(0.2)
    for t in threads[1:]:
        t.start()
    time.sleep(0.3)
    gate.set()
    for t in threads:
        t.join(10)
    assert not overlap[0]  # one call at a time
    assert len(calls) < 12 and sum(calls) == sum(1 + i % 3 for i in range(12))  # batched
    for i, (scores, kind) in results.items():
        assert kind == "probability" and scores.shape == (1 + i % 3, 2) and (scores == i).all()

    # A call waits (up to `linger`) for requests announced but still decoding, not for others.
    sizes = []
    lingering = MicroBatcher(lambda x: (np.zeros((len(x), 2)), "decision"), linger=5.0,
                             on_batch=lambda requests, images: sizes.append(requests))
    with lingering.incoming() as late:
        with lingering.incoming() as early:
            t = threading.Thread(target=early, args=(np.zeros((1, 2, 2, 3), np.uint8),))
            t.start()
            time.sleep(0.2)
            late(np.zeros((2, 2, 2, 3), np.uint8))
            t.join(5)
    assert sizes == [2]
    start = time.monotonic()
    with lingering.incoming():
        pass  # announced, then refused (bad input): withdrawn, nobody waits for it
    lingering(np.zeros((1, 2, 2, 3), np.uint8))
    assert sizes == [2, 1] and time.monotonic() - start < 1

    def broken(images):
        raise RuntimeError("model failed")

    with pytest.raises(RuntimeError, match="model failed"):
        MicroBatcher(broken)(np.zeros((1, 2, 2, 3), np.uint8))


# ----------------------------------------------------------------------------- auth

def test_bearer_token_on_predict_and_features_only(registry, models_dir, monkeypatch):
    monkeypatch.setenv("CVPIPE_API_TOKEN", "s3cret-token")
    c = create_app({"MODELS_DIR": str(models_dir)}, registry=registry).test_client()
    blob = encode(test_images(1)[0])
    for path in (f"/v1/models/{SVM}/predict", "/v1/features"):
        resp = c.post(path, data=files(blob))
        assert_error(resp, 401, "unauthorized")
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert_error(c.post(path, data=files(blob), headers={"Authorization": "Bearer wrong"}), 401,
                     "invalid_token")
        assert_error(c.post(path, data=files(blob), headers={"Authorization": "Basic czNjcmV0"}), 401)
        ok = c.post(path, data=files(blob), headers={"Authorization": "Bearer s3cret-token"})
        assert ok.status_code == 200, ok.data
    # unknown models are not revealed to unauthenticated clients
    assert_error(c.post("/v1/models/nope/predict", data=files(blob)), 401)
    for path in ("/healthz", "/readyz", "/v1/models", "/metrics", "/openapi.json"):
        assert c.get(path).status_code == 200
    doc = c.get("/openapi.json").get_json()
    assert doc["paths"]["/v1/models/{name}/predict"]["post"]["security"] == [{"bearerAuth": []}]
    # off: an empty variable means no authentication
    monkeypatch.setenv("CVPIPE_API_TOKEN", "")
    c = create_app({"MODELS_DIR": str(models_dir)}, registry=registry).test_client()
    assert c.post(f"/v1/models/{SVM}/predict", data=files(blob)).status_code == 200


# ----------------------------------------------------------------------------- features

def test_features_default_configured_and_from_a_model(client):
    from cvpipe.features import make_features

    x = test_images(3)
    blobs = [encode(img) for img in x]
    body = client.post("/v1/features", data=files(*blobs)).get_json()
    expected = np.asarray(make_features("hog+color").transform(x), np.float32)
    assert body["features"]["name"] == "hog+color" and body["features"]["params"] == {}
    assert set(body["features"]["effective"]) == {"hog", "color"}
    assert body["features"]["effective"]["hog"]["orientations"] == 9
    assert body["input_size"] == [32, 32] and body["dim"] == expected.shape[1] and body["model"] is None
    got = np.asarray([r["vector"] for r in body["results"]], np.float32)
    np.testing.assert_array_equal(got, expected)
    assert [r["name"] for r in body["results"]] == ["0.png", "1.png", "2.png"]

    body = client.post("/v1/features", json={"images": [b64(blobs[0])], "features": "hog",
                                             "params": {"orientations": 12}, "size": [48, 48]}).get_json()
    f = make_features("hog", orientations=12)
    ref = f.transform(decode(blobs[0], size=(48, 48))[None])[0]
    assert body["features"]["name"] == "hog" and body["features"]["params"] == {"orientations": 12}
    assert body["features"]["effective"]["hog"]["orientations"] == 12
    assert body["input_size"] == [48, 48] and body["dim"] == ref.size
    np.testing.assert_allclose(body["results"][0]["vector"], ref, rtol=1e-6)

    form = client.post("/v1/features", data=files(blobs[0], features="color", params='{}', size="40x24"),
                       content_type="multipart/form-data").get_json()
    assert form["features"]["name"] == "color" and form["input_size"] == [40, 24]
    query = client.post("/v1/features", data=blobs[0], content_type="image/png",
                        query_string={"features": "color", "size": "40,24"}).get_json()
    assert query["results"][0]["vector"] == form["results"][0]["vector"]

    body = client.post("/v1/features", json={"images": [b64(blobs[0])], "model": SVM}).get_json()
    assert body["model"] == SVM and body["features"]["name"] == "hog+color"
    assert body["dim"] == expected.shape[1]


def test_features_bad_options(client):
    blob = b64(encode(test_images(1)[0]))
    for fields, status, code in [
        ({"features": "sift"}, 400, "invalid_option"),
        ({"features": 3}, 400, "invalid_option"),
        ({"params": [1, 2]}, 400, "invalid_option"),
        ({"params": "{not json"}, 400, "invalid_option"),
        ({"features": "hog", "params": {"orientations": -1}}, 400, "invalid_features"),
        ({"features": "hog", "params": {"no_such_param": 1}}, 400, "invalid_features"),
        ({"params": {"n_jobs": 64}}, 400, "invalid_features"),
        ({"size": [4, 4]}, 400, "invalid_option"),
        ({"size": [32]}, 400, "invalid_option"),
        ({"size": "huge"}, 400, "invalid_option"),
        ({"size": [9999, 32]}, 400, "invalid_option"),
        ({"model": SVM, "features": "hog"}, 400, "invalid_option"),
        ({"model": "nope"}, 404, "unknown_model"),
        ({"model": FAKE}, 400, "no_features"),
    ]:
        assert_error(client.post("/v1/features", json={"images": [blob], **fields}), status, code)
    assert_error(client.post("/v1/features", data=b"x", content_type="text/plain"), 415)
    assert_error(client.post("/v1/features", json={"images": ["%%"]}), 400, "invalid_base64")


def test_feature_response_size_is_bounded(client):
    blob = b64(encode(test_images(1)[0]))
    body = assert_error(client.post("/v1/features", json={"images": [blob] * 512, "size": [512, 512]}),
                        413, "result_too_large")
    assert "values" in body["message"]


# ----------------------------------------------------------------------------- metrics, openapi

def test_metrics_count_requests_errors_and_latency(client):
    blob = encode(test_images(1)[0])
    for _ in range(3):
        predict(client, data=files(blob))
    predict(client, data=files(b"junk"))
    predict(client, model="made-up-name", data=files(blob))
    client.post("/v1/features", data=files(blob))
    text = client.get("/metrics").get_data(as_text=True)
    assert client.get("/metrics").mimetype == "text/plain"

    def value(name: str, **labels) -> float:
        for line in text.splitlines():
            if line.split("{")[0].split(" ")[0] == name and all(f'{k}="{v}"' in line
                                                                for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    assert value("cvpipe_http_requests_total", endpoint="api.predict", model=SVM, status="200") == 3
    assert value("cvpipe_http_requests_total", endpoint="api.predict", model=SVM, status="400") == 1
    assert value("cvpipe_http_errors_total", endpoint="api.predict", model=SVM, error="bad_image") == 1
    assert value("cvpipe_http_errors_total", endpoint="api.predict", model="", error="unknown_model") == 1
    assert value("cvpipe_http_request_duration_seconds_count", endpoint="api.predict", model=SVM) == 4
    assert value("cvpipe_http_request_duration_seconds_bucket", endpoint="api.predict", model=SVM,
                 le="+Inf") == 4
    assert value("cvpipe_http_request_duration_seconds_count", endpoint="api.features") == 1
    assert value("cvpipe_images_total", endpoint="api.predict", model=SVM) == 4
    assert value("cvpipe_models_loaded") >= 3
    assert "made-up-name" not in text  # client-chosen names never become labels


def test_openapi_document_describes_every_endpoint(client, local):
    doc = client.get("/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) == {"/v1/models", "/v1/models/{name}", "/v1/models/{name}/predict",
                                 "/v1/models/{name}/pictures", "/v1/features", "/v1/reports",
                                 "/healthz", "/readyz", "/metrics", "/openapi.json"}
    predict_op = doc["paths"]["/v1/models/{name}/predict"]["post"]
    assert set(predict_op["requestBody"]["content"]) == {"multipart/form-data", "application/json",
                                                         "image/*", "application/octet-stream"}
    assert set(predict_op["responses"]) >= {"200", "400", "401", "404", "413", "415"}
    assert set(predict_op["parameters"][0]["schema"]["enum"]) == set(local)
    assert "securitySchemes" not in doc["components"]  # authentication is off here
    assert doc == json.loads(json.dumps(doc))  # plain JSON


def test_micro_batcher_times_out_a_hung_model_and_isolates_a_bad_input():
    import threading

    from service.batching import BatchTimeout, MicroBatcher

    release = threading.Event()

    def hangs(images):
        release.wait(30)
        return np.zeros((len(images), 2)), "decision"

    stuck = MicroBatcher(hangs, timeout=0.3)
    start = time.monotonic()
    with pytest.raises(BatchTimeout):
        stuck(np.zeros((1, 2, 2, 3), np.uint8))  # its own call hangs
    with pytest.raises(BatchTimeout):
        stuck(np.zeros((1, 2, 2, 3), np.uint8))  # queued behind it
    assert time.monotonic() - start < 2
    release.set()
    scores, _ = stuck(np.zeros((1, 2, 2, 3), np.uint8))  # the model answers again
    assert scores.shape == (1, 2)

    gate = threading.Event()

    def breaks_on_13(images):
        gate.wait(5)  # let every request join one call
        if (images == 13).any():
            raise ValueError("cannot score 13")
        return images.reshape(len(images), -1)[:, :2].astype(float), "probability"

    batcher = MicroBatcher(breaks_on_13, linger=0.5)
    outcomes = {}

    def request(i):
        try:
            outcomes[i] = batcher(np.full((1, 2, 2, 3), i, np.uint8))[0][0, 0]
        except ValueError as exc:
            outcomes[i] = str(exc)

    threads = [threading.Thread(target=request, args=(i,)) for i in (11, 12, 13, 14)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    gate.set()
    for t in threads:
        t.join(10)
    assert outcomes == {11: 11.0, 12: 12.0, 13: "cannot score 13", 14: 14.0}


def test_a_hung_model_is_a_503_not_a_hung_request(registry, models_dir, monkeypatch):
    import threading

    release = threading.Event()
    model = registry.get(SVM)
    original = model.batcher.fn
    monkeypatch.setattr(model.batcher, "fn", lambda images: (release.wait(30), original(images))[1])
    app = create_app({"MODELS_DIR": str(models_dir), "PREDICT_TIMEOUT": 0.3}, registry=registry)
    try:
        resp = app.test_client().post(f"/v1/models/{SVM}/predict", data=files(encode(test_images(1)[0])))
        body = assert_error(resp, 503, "model_timeout")
        assert resp.headers["Retry-After"] and body["details"]["model"] == SVM
    finally:
        release.set()
        model.batcher.timeout = 30.0


def test_options_are_read_by_their_documented_schemas():
    """service.schemas is the one source: the handlers parse an option with the schema the
    OpenAPI document shows for it, in both of its spellings."""
    from service.config import load_settings
    from service.errors import ApiError
    from service.openapi import build_openapi
    from service.schemas import OPTIONS

    size, top_k, params = OPTIONS["size"], OPTIONS["top_k"], OPTIONS["params"]
    assert size.parse("32x48") == [32, 48] and size.parse("24") == [24, 24]
    assert size.parse([16, 64]) == [16, 64] and top_k.parse("5") == 5 and top_k.parse(7) == 7
    assert params.parse('{"orientations": 12}') == {"orientations": 12}
    for option, bad, why in [(size, "7", "minimum"), (size, [32], "too short"),
                             (size, "32x", "does not match"), (top_k, True, "not of type"),
                             (top_k, "0", "minimum"), (top_k, "-2", "-2 is less than the minimum"),
                             (top_k, "1.5", "not of type"), (params, "[1, 2]", "not of type"),
                             (params, "{oops", "not JSON"), (params, "[" * 40 + "]" * 40, "deep")]:
        with pytest.raises(ApiError, match=why) as info:
            option.parse(bad)
        assert info.value.status == 400 and info.value.code == "invalid_option"
    doc = build_openapi(load_settings({"API_TOKEN": None}), [])
    features = doc["paths"]["/v1/features"]["post"]
    query = {p["name"]: p["schema"] for p in features["parameters"]}
    assert query["size"] == size.text and query["params"] == params.text
    body = features["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert body["size"] == size.value and body["params"] == params.value


def test_answers_are_checked_against_their_documented_schemas(client):
    """A test app checks every JSON answer of a documented operation against the document."""
    from service.schemas import check_response

    resp = client.post(f"/v1/models/{SVM}/predict", data=encode(test_images(1)[0]),
                       content_type="image/png")
    assert resp.status_code == 200  # checked by the app's hook on the way out
    body = resp.get_json()
    schema = {"$ref": "#/components/schemas/PredictResponse"}
    check_response(schema, body)
    broken = {**body, "predictions": [{**body["predictions"][0], "score": "high"}]}
    with pytest.raises(AssertionError, match="predictions/0/score"):
        check_response(schema, broken)
    with pytest.raises(AssertionError, match="'timing_ms' is a required property"):
        check_response(schema, {k: v for k, v in body.items() if k != "timing_ms"})
