"""A multilayer perceptron on feature vectors, in PyTorch, with the scikit-learn interface.

With ``hidden_sizes=()`` it is multinomial logistic (softmax) regression, the baseline that
shows what a hidden layer adds.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from cvpipe.classifiers.chunks import ArrayChunks, Chunks, read_ahead
from cvpipe.data.splits import stratified_split
from cvpipe.device import bfloat16_is_fast, resolve_device

log = logging.getLogger(__name__)

#: Rows scored at a time when evaluating.
EVAL_ROWS = 8192


class Dropout(nn.Dropout):
    """:class:`torch.nn.Dropout` whose mask, on a CPU, is drawn by NumPy once a generator is
    given (:meth:`seed`).

    Torch's CPU dropout draws its Bernoulli numbers one at a time: 2.5 ms for a batch of
    256 x 1,024 values, as long as the layer's matrix product, and 38% of an MLP's training
    time on CIFAR-10's HOG features. NumPy's PCG64 gives 16-bit integers 5x faster; a value
    is kept where its integer is at least ``round(p * 65536)`` (``p`` to within 1e-5) and
    scaled by ``1 / (1 - p)``, as torch's. On a GPU, and without a generator, this is
    torch's own dropout.
    """

    generator: np.random.Generator | None = None

    def seed(self, generator: np.random.Generator | None) -> None:
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or self.generator is None or x.device.type != "cpu":
            return super().forward(x)
        draws = self.generator.integers(0, 1 << 16, size=tuple(x.shape), dtype=np.uint16)
        keep = torch.from_numpy(draws >= round(self.p * (1 << 16)))
        return x * (keep.to(x.dtype) * (1.0 / (1.0 - self.p)))


def build_mlp(n_in: int, n_out: int, hidden_sizes: tuple[int, ...], dropout: float,
              batch_norm: bool, input_dropout: float = 0.0) -> nn.Sequential:
    """Linear -> [BatchNorm] -> ReLU -> Dropout blocks, then a linear head."""
    layers: list[nn.Module] = [Dropout(input_dropout)] if input_dropout > 0 else []
    width = n_in
    for h in hidden_sizes:
        layers += [nn.Linear(width, h, bias=not batch_norm)]
        layers += [nn.BatchNorm1d(h)] if batch_norm else []
        layers += [nn.ReLU(inplace=True), Dropout(dropout)]
        width = h
    layers.append(nn.Linear(width, n_out))
    for m in layers:
        if isinstance(m, nn.Linear):  # He initialisation for ReLU layers
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return nn.Sequential(*layers)


class MLPClassifier(ClassifierMixin, BaseEstimator):
    """MLP trained with Adam(W) or SGD-momentum and early stopping on validation loss.

    Parameters
    ----------
    hidden_sizes : tuple of int
        Width of each hidden layer; ``()`` gives softmax regression.
    dropout, input_dropout : float
        Dropout after each hidden layer / on the inputs.
    batch_norm : bool
        Batch normalisation after each hidden linear layer.
    weight_decay : float
        Decoupled weight decay (AdamW) or L2 (SGD).
    optimizer : {"adam", "sgd"}
        AdamW, or SGD with Nesterov momentum.
    lr, momentum, batch_size, max_epochs : float, float, int, int
    lr_schedule : {"cosine", "plateau", "none"}
        Cosine decay over ``max_epochs``, halve on a validation-loss plateau, or constant.
    label_smoothing : float
    early_stopping : bool
        Stop when validation loss has not improved for ``patience`` epochs and restore the
        best weights. Validation data is ``eval_set`` passed to :meth:`fit`, else a seeded,
        stratified ``validation_fraction`` of the training data.
    precision : {"float32", "bfloat16", "auto"}
        The arithmetic of training's matrix products: bfloat16 (autocast; the weights and the
        optimiser stay float32) is 2-3x faster on CPUs with AMX and on GPUs, 1.5x with
        AVX512_BF16 alone, but emulated and several times slower than float32 on other CPUs;
        "auto" takes bfloat16 where the device multiplies it in hardware
        (:func:`cvpipe.device.bfloat16_is_fast`), else float32. Prediction is float32 either way.
    device : str
        "auto" (CUDA if present, else CPU), "cpu" or "cuda[:N]".
    random_state : int

    Attributes
    ----------
    classes_, n_features_in_, model_ (torch module on CPU), history_ (per-epoch
    train_loss, val_loss, val_accuracy, lr), best_epoch_, n_epochs_, precision_ (the
    arithmetic training used: "float32" or "bfloat16")
    """

    _parameter_constraints: dict = {
        "hidden_sizes": [list, tuple],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "input_dropout": [Interval(Real, 0, 1, closed="left")],
        "batch_norm": ["boolean"],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "optimizer": [StrOptions({"adam", "sgd"})],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "momentum": [Interval(Real, 0, 1, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "lr_schedule": [StrOptions({"cosine", "plateau", "none"})],
        "label_smoothing": [Interval(Real, 0, 1, closed="left")],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "patience": [Interval(Integral, 1, None, closed="left")],
        "precision": [StrOptions({"float32", "bfloat16", "auto"})],
        "device": [str],
        "random_state": [Interval(Integral, 0, None, closed="left")],
    }

    def __init__(self, hidden_sizes: tuple[int, ...] = (1024,), dropout: float = 0.5,
                 input_dropout: float = 0.0, batch_norm: bool = True, weight_decay: float = 1e-4,
                 optimizer: str = "adam", lr: float = 1e-3, momentum: float = 0.9,
                 batch_size: int = 256, max_epochs: int = 50, lr_schedule: str = "cosine",
                 label_smoothing: float = 0.0, early_stopping: bool = True,
                 validation_fraction: float = 0.1, patience: int = 5, precision: str = "float32",
                 device: str = "auto", random_state: int = 0):
        self.hidden_sizes = hidden_sizes
        self.dropout = dropout
        self.input_dropout = input_dropout
        self.batch_norm = batch_norm
        self.weight_decay = weight_decay
        self.optimizer = optimizer
        self.lr = lr
        self.momentum = momentum
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.lr_schedule = lr_schedule
        self.label_smoothing = label_smoothing
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.precision = precision
        self.device = device
        self.random_state = random_state

    def _validate_params(self) -> None:
        super()._validate_params()
        if not all(isinstance(h, Integral) and not isinstance(h, bool) and h > 0
                   for h in self.hidden_sizes):
            raise ValueError(f"hidden_sizes must hold positive integers, not {self.hidden_sizes!r}")

    def fit(self, X, y, eval_set: tuple[np.ndarray, np.ndarray] | None = None) -> MLPClassifier:
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        classes, y_idx = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError("MLPClassifier needs samples of at least 2 classes, got 1 class")
        if eval_set is not None:
            evaluation = ArrayChunks(np.asarray(eval_set[0], np.float32),
                                     np.searchsorted(classes, eval_set[1]), rows=EVAL_ROWS)
        elif self.early_stopping and len(y) >= 20:
            tr, va = stratified_split(y_idx, self.validation_fraction, self.random_state)
            X, evaluation, y_idx = X[tr], ArrayChunks(X[va], y_idx[va], rows=EVAL_ROWS), y_idx[tr]
        else:
            evaluation = None
        # one block: every epoch is a permutation of all the rows, as in-memory training does
        return self._train(ArrayChunks(X, y_idx, rows=max(len(X), 1)), evaluation, classes)

    def fit_chunks(self, chunks: Chunks, eval_chunks: Chunks | None = None) -> MLPClassifier:
        """Fit on rows read a block at a time (:mod:`cvpipe.classifiers.chunks`), their labels
        class indices; an epoch visits the blocks in a random order and the rows of each block
        in a random order (the rows of a block should be a random sample: see
        :func:`cvpipe.featurestore.split_features`). ``eval_chunks``: the early-stopping data."""
        self._validate_params()
        classes = np.unique(chunks.labels())
        if len(classes) < 2:
            raise ValueError("MLPClassifier needs samples of at least 2 classes, got 1 class")
        self.n_features_in_ = int(chunks.n_features)
        return self._train(chunks, eval_chunks, classes)

    def _train(self, chunks: Chunks, evaluation: Chunks | None, classes: np.ndarray) -> MLPClassifier:
        self.classes_ = classes
        device = resolve_device(self.device)
        torch.manual_seed(self.random_state)
        rng = np.random.default_rng(self.random_state)
        model = build_mlp(chunks.n_features, len(classes), tuple(self.hidden_sizes), self.dropout,
                          self.batch_norm, self.input_dropout).to(device)
        dropouts = [m for m in model.modules() if isinstance(m, Dropout)]
        for i, layer in enumerate(dropouts):  # seeded masks, one stream per layer
            layer.seed(np.random.default_rng([self.random_state, i]))
        opt = self._optimizer(model, device)
        if self.lr_schedule == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.max_epochs)
        elif self.lr_schedule == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=2)
        else:
            sched = None
        loss_fn = nn.CrossEntropyLoss(label_smoothing=self.label_smoothing)
        self.precision_ = (self.precision if self.precision != "auto"
                           else "bfloat16" if bfloat16_is_fast(device) else "float32")
        autocast = self.precision_ == "bfloat16"

        history = {"train_loss": [], "val_loss": [], "val_accuracy": [], "lr": []}
        best = (np.inf, 0, None)
        for epoch in range(self.max_epochs):
            model.train()
            total, seen = 0.0, 0
            for xb, yb in _batches(chunks, self.batch_size, rng, device, drop_single=self.batch_norm):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    loss = loss_fn(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(yb)
                seen += len(yb)
            history["train_loss"].append(total / max(seen, 1))
            history["lr"].append(opt.param_groups[0]["lr"])
            if evaluation is not None:
                val_loss, val_acc = _evaluate(model, evaluation, device)
                history["val_loss"].append(val_loss)
                history["val_accuracy"].append(val_acc)
                log.debug("epoch %d train %.4f val %.4f acc %.4f", epoch, total / max(seen, 1),
                          val_loss, val_acc)
                if val_loss < best[0]:
                    best = (val_loss, epoch, copy.deepcopy(model.state_dict()))
                elif self.early_stopping and epoch - best[1] >= self.patience:
                    break
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step(history["val_loss"][-1] if evaluation is not None else history["train_loss"][-1])
            elif sched is not None:
                sched.step()
        if self.early_stopping and best[2] is not None:
            model.load_state_dict(best[2])
        self.best_epoch_ = best[1] if best[2] is not None else epoch
        self.n_epochs_ = epoch + 1
        self.history_ = history
        for layer in dropouts:
            layer.seed(None)
        self.model_ = model.to("cpu").eval()
        return self

    def _optimizer(self, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
        # fused kernels: one pass over the parameters per step, not several (on a CPU the
        # optimiser step of a wide first layer costs as much as its forward pass otherwise)
        fused = {"fused": True} if device.type in ("cpu", "cuda") else {}
        params = model.parameters()
        if self.optimizer == "adam":
            return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay, **fused)
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, nesterov=True,
                               weight_decay=self.weight_decay, **fused)

    def _logits(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float32)
        with torch.inference_mode():
            X = np.require(X, requirements=["W"])  # torch wants writable memory (see _batches)
            out = [self.model_(torch.from_numpy(X[i: i + EVAL_ROWS])) for i in range(0, len(X), EVAL_ROWS)]
        return torch.cat(out).numpy() if out else np.zeros((0, len(self.classes_)), np.float32)

    def predict_proba(self, X) -> np.ndarray:
        logits = self._logits(X)
        return torch.softmax(torch.from_numpy(logits), dim=1).numpy()

    def predict(self, X) -> np.ndarray:
        idx = self._logits(X).argmax(axis=1)  # checks fitted state before classes_ is read
        return self.classes_[idx]


def _batches(chunks: Chunks, batch_size: int, rng: np.random.Generator, device: torch.device,
             drop_single: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Minibatches of ``batch_size`` rows: the blocks in a random order, the rows of each
    block shuffled, a block's leftover rows carried into the next. A last batch of one row
    is dropped where batch norm cannot train on it."""
    carry: tuple[torch.Tensor, torch.Tensor] | None = None
    for X, y in read_ahead(chunks, rng if len(chunks.refs()) > 1 else None):
        # torch wants writable memory: a stored block is a copy-on-write map, so nothing is copied
        Xt = torch.from_numpy(np.require(X, np.float32, ["C", "W"])).to(device)
        yt = torch.from_numpy(np.require(y, np.int64, ["W"])).to(device)
        order = torch.from_numpy(rng.permutation(len(yt))).to(device)
        # each batch gathers its own rows: the block is never copied whole, shuffled or joined
        start = 0
        if carry is not None:
            take = order[:batch_size - len(carry[1])]
            carry = torch.cat([carry[0], Xt[take]]), torch.cat([carry[1], yt[take]])
            start = len(take)
            if len(carry[1]) < batch_size:
                continue
            yield carry
            carry = None
        full = len(yt) - (len(yt) - start) % batch_size
        for at in range(start, full, batch_size):
            rows = order[at:at + batch_size]
            yield Xt[rows], yt[rows]
        carry = (Xt[order[full:]], yt[order[full:]]) if full < len(yt) else None
    if carry is not None and not (drop_single and len(carry[1]) == 1):
        yield carry


def _evaluate(model: nn.Module, chunks: Chunks, device: torch.device) -> tuple[float, float]:
    model.eval()
    loss, right, n = 0.0, 0, 0
    with torch.inference_mode():
        for X, y in read_ahead(chunks):
            yt = torch.from_numpy(np.require(y, np.int64, ["W"])).to(device)
            Xt = torch.from_numpy(np.require(X, np.float32, ["C", "W"])).to(device)
            for i in range(0, len(yt), EVAL_ROWS):
                logits = model(Xt[i: i + EVAL_ROWS])
                loss += nn.functional.cross_entropy(logits, yt[i: i + EVAL_ROWS], reduction="sum").item()
                right += int((logits.argmax(1) == yt[i: i + EVAL_ROWS]).sum())
            n += len(yt)
    return loss / max(n, 1), right / max(n, 1)
