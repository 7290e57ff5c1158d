"""A multilayer perceptron on feature vectors, in PyTorch, with the scikit-learn interface.

With ``hidden_sizes=()`` it is multinomial logistic (softmax) regression, the baseline that
shows what a hidden layer adds.
"""

from __future__ import annotations

import copy
import logging
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from cvpipe.data.splits import stratified_split
from cvpipe.device import resolve_device

log = logging.getLogger(__name__)


def build_mlp(n_in: int, n_out: int, hidden_sizes: tuple[int, ...], dropout: float,
              batch_norm: bool, input_dropout: float = 0.0) -> nn.Sequential:
    """Linear -> [BatchNorm] -> ReLU -> Dropout blocks, then a linear head."""
    layers: list[nn.Module] = [nn.Dropout(input_dropout)] if input_dropout > 0 else []
    width = n_in
    for h in hidden_sizes:
        layers += [nn.Linear(width, h, bias=not batch_norm)]
        layers += [nn.BatchNorm1d(h)] if batch_norm else []
        layers += [nn.ReLU(inplace=True), nn.Dropout(dropout)]
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
    device : str
        "auto" (CUDA if present, else CPU), "cpu" or "cuda[:N]".
    random_state : int

    Attributes
    ----------
    classes_, n_features_in_, model_ (torch module on CPU), history_ (per-epoch
    train_loss, val_loss, val_accuracy, lr), best_epoch_, n_epochs_
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
        "device": [str],
        "random_state": [Interval(Integral, 0, None, closed="left")],
    }

    def __init__(self, hidden_sizes: tuple[int, ...] = (1024,), dropout: float = 0.5,
                 input_dropout: float = 0.0, batch_norm: bool = True, weight_decay: float = 1e-4,
                 optimizer: str = "adam", lr: float = 1e-3, momentum: float = 0.9,
                 batch_size: int = 256, max_epochs: int = 50, lr_schedule: str = "cosine",
                 label_smoothing: float = 0.0, early_stopping: bool = True,
                 validation_fraction: float = 0.1, patience: int = 5, device: str = "auto",
                 random_state: int = 0):
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
        self.classes_, y_idx = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError("MLPClassifier needs samples of at least 2 classes, got 1 class")
        if eval_set is not None:
            Xv = np.asarray(eval_set[0], np.float32)
            yv = np.searchsorted(self.classes_, eval_set[1])
        elif self.early_stopping and len(y) >= 20:
            tr, va = stratified_split(y_idx, self.validation_fraction, self.random_state)
            X, Xv, y_idx, yv = X[tr], X[va], y_idx[tr], y_idx[va]
        else:
            Xv = yv = None
        device = resolve_device(self.device)
        torch.manual_seed(self.random_state)
        gen = torch.Generator().manual_seed(self.random_state)
        model = build_mlp(X.shape[1], len(self.classes_), tuple(self.hidden_sizes), self.dropout,
                          self.batch_norm, self.input_dropout).to(device)
        params = model.parameters()
        if self.optimizer == "adam":
            opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        else:
            opt = torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, nesterov=True,
                                  weight_decay=self.weight_decay)
        if self.lr_schedule == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.max_epochs)
        elif self.lr_schedule == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=2)
        else:
            sched = None
        loss_fn = nn.CrossEntropyLoss(label_smoothing=self.label_smoothing)
        Xt, yt = torch.from_numpy(X).to(device), torch.from_numpy(y_idx).to(device)
        Xvt = torch.from_numpy(Xv).to(device) if Xv is not None else None
        yvt = torch.from_numpy(np.asarray(yv)).to(device) if yv is not None else None

        history = {"train_loss": [], "val_loss": [], "val_accuracy": [], "lr": []}
        best = (np.inf, 0, None)
        n = len(Xt)
        for epoch in range(self.max_epochs):
            model.train()
            order = torch.randperm(n, generator=gen).to(device)
            total = 0.0
            # Drop a last batch of one sample: batch norm cannot train on it.
            for start in range(0, n - (n % self.batch_size == 1), self.batch_size):
                idx = order[start: start + self.batch_size]
                loss = loss_fn(model(Xt[idx]), yt[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            history["train_loss"].append(total / n)
            history["lr"].append(opt.param_groups[0]["lr"])
            if Xvt is not None:
                val_loss, val_acc = _evaluate(model, Xvt, yvt, loss_fn)
                history["val_loss"].append(val_loss)
                history["val_accuracy"].append(val_acc)
                log.debug("epoch %d train %.4f val %.4f acc %.4f", epoch, total / n, val_loss, val_acc)
                if val_loss < best[0]:
                    best = (val_loss, epoch, copy.deepcopy(model.state_dict()))
                elif self.early_stopping and epoch - best[1] >= self.patience:
                    break
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step(history["val_loss"][-1] if Xvt is not None else history["train_loss"][-1])
            elif sched is not None:
                sched.step()
        if self.early_stopping and best[2] is not None:
            model.load_state_dict(best[2])
        self.best_epoch_ = best[1] if best[2] is not None else epoch
        self.n_epochs_ = epoch + 1
        self.history_ = history
        self.model_ = model.to("cpu").eval()
        return self

    def _logits(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float32)
        with torch.inference_mode():
            out = [self.model_(torch.from_numpy(X[i: i + 8192])) for i in range(0, len(X), 8192)]
        return torch.cat(out).numpy() if out else np.zeros((0, len(self.classes_)), np.float32)

    def predict_proba(self, X) -> np.ndarray:
        logits = self._logits(X)
        return torch.softmax(torch.from_numpy(logits), dim=1).numpy()

    def predict(self, X) -> np.ndarray:
        idx = self._logits(X).argmax(axis=1)  # checks fitted state before classes_ is read
        return self.classes_[idx]


def _evaluate(model: nn.Module, X: torch.Tensor, y: torch.Tensor, loss_fn: nn.Module) -> tuple[float, float]:
    model.eval()
    with torch.inference_mode():
        logits = torch.cat([model(X[i: i + 8192]) for i in range(0, len(X), 8192)])
        loss = nn.functional.cross_entropy(logits, y).item()
        acc = (logits.argmax(1) == y).float().mean().item()
    return loss, acc
