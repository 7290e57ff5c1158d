"""One pipeline concept: what every trainable model (classic or CNN) offers.

A :class:`Pipeline` is declared by a table of ``pipelines.toml`` (or a user's file), can be
given run options (``configure``), checked against the data it will meet (``check``), trained
on a dataset into a model folder (``train``), and describes itself (``card``,
``definition``). ``cvpipe train``, ``cvpipe compare`` and the model registry use only this
interface; each kind's class knows its own files (``load``).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from cvpipe.data.dataset import Dataset
from cvpipe.data.splits import split_sizes
from cvpipe.errors import ConfigError
from cvpipe.featurestore.dataset import StoreSettings
from cvpipe.images import DEFAULT_FIT
from cvpipe.models.artifact import Predictor


@dataclass(frozen=True)
class DataShape:
    """What a pipeline will be trained on: sample counts and the size of one image."""

    n_train: int  # fit during selection
    n_val: int  # scores the candidates; joins the fit when refitting
    image_shape: tuple[int, ...]  # (H, W, C)

    @classmethod
    def of(cls, dataset: Dataset) -> DataShape:
        train, val = dataset.split_indices()
        return cls(len(train), len(val), tuple(int(s) for s in dataset.images("train").shape[1:]))

    @classmethod
    def planned(cls, class_counts: list[int], val_fraction: float,
                image_shape: tuple[int, ...]) -> DataShape:
        """The shape a dataset with ``class_counts`` training images per class will have."""
        n_train, n_val = split_sizes(class_counts, val_fraction)
        return cls(n_train, n_val, tuple(image_shape))

    def require_splits(self, pipeline: str) -> None:
        """:class:`ConfigError` unless both the training and the validation split have images:
        every pipeline selects on validation (a few images per class and a small validation
        fraction round to none)."""
        if self.n_train < 1 or self.n_val < 1:
            raise ConfigError(f"pipeline {pipeline!r}: needs training and validation images, the "
                              f"data gives {self.n_train} and {self.n_val} (a larger "
                              "--limit-per-class or --val-fraction gives validation some)")


def dataset_record(dataset: Dataset) -> dict[str, Any]:
    """The ``dataset`` block of ``model.json``: source, checksum, split and counts."""
    counts = {s: sum(c.values()) for s, c in dataset.manifest["counts"].items()}
    train, val = dataset.split_indices()
    return {"name": dataset.name, "title": dataset.title,
            "source": dataset.manifest.get("source"), "checksum": dataset.checksum,
            "val_fraction": dataset.val_fraction, "seed": dataset.seed, "counts": counts,
            "train": len(train), "val": len(val), "test": counts.get("test")}


class Pipeline(abc.ABC):
    """A named way to turn a dataset into a served model.

    Attributes
    ----------
    kind : str
        The artifact kind its models have ("classic", "cnn"); ``model.json`` records it and
        :func:`cvpipe.models.load_model` uses it to find the class that reads the files.
    name : str
    description : str
    """

    kind: ClassVar[str]
    seed: int  # of everything random in training (a run option)
    #: Run options every kind takes: the seed of everything random in training.
    COMMON_OPTIONS: ClassVar[tuple[str, ...]] = ("seed",)

    def __init__(self, name: str, description: str = "") -> None:
        self.name = name
        self.description = description

    @classmethod
    @abc.abstractmethod
    def from_table(cls, name: str, table: Mapping[str, Any]) -> Pipeline:
        """Parse a ``[pipelines.<name>]`` table (without its ``kind``); errors name the pipeline."""

    @abc.abstractmethod
    def option_names(self) -> tuple[str, ...]:
        """The run options :meth:`configure` takes."""

    @abc.abstractmethod
    def _with_options(self, options: dict[str, Any]) -> Pipeline:
        """A copy with checked ``options`` applied."""

    def configure(self, options: Mapping[str, Any] | None = None, **more: Any) -> Pipeline:
        """A copy of this pipeline with run options (``seed``, ``time_budget``, ``refit``, ...).

        Raises
        ------
        ConfigError
            An option this pipeline does not take, or an invalid value.
        """
        merged = {str(k).replace("-", "_"): v for k, v in {**dict(options or {}), **more}.items()}
        unknown = sorted(set(merged) - set(self.option_names()))
        if unknown:
            raise ConfigError(f"pipeline {self.name!r} ({self.kind}) takes no option "
                              f"{', '.join(map(repr, unknown))}; its options: "
                              f"{', '.join(sorted(self.option_names()))}")
        try:
            return self._with_options(merged) if merged else self
        except ConfigError as exc:
            raise ConfigError(f"pipeline {self.name!r}: {exc}") from None

    @abc.abstractmethod
    def definition(self) -> dict[str, Any]:
        """JSON of everything that decides the trained model (with the data, the reuse key)."""

    @abc.abstractmethod
    def card(self) -> dict[str, Any]:
        """What it is, for people: ``family``, ``features``, ``classifier``, ``description``."""

    @abc.abstractmethod
    def check(self, shape: DataShape) -> None:
        """Build everything for data of this shape without training; :class:`ConfigError`
        naming the pipeline if something will not work."""

    @abc.abstractmethod
    def train(self, dataset: Dataset, model_dir: Path, *, progress: bool = True,
              store: StoreSettings | None = None) -> dict[str, Any]:
        """Select on validation, fit, score (test once) and write the model folder.

        ``store``: where features are stored and reused, and the engine (this machine or a
        Dask cluster) of the work that reads them (the CNN learns from pixels: ignored).

        Returns
        -------
        dict
            The ``model.json`` written.
        """

    @classmethod
    @abc.abstractmethod
    def load(cls, model_dir: Path, meta: dict[str, Any]) -> Predictor:
        """The predictor stored in a verified model folder of this kind."""

    def common_metadata(self, dataset: Dataset) -> dict[str, Any]:
        """The fields of ``model.json`` every kind writes the same way."""
        return {"pipeline": self.name, "kind": self.kind, "card": self.card(),
                "definition": self.definition(), "classes": list(dataset.classes),
                "input_size": list(dataset.image_shape[:2]), "channels": dataset.image_shape[2],
                "fit": dataset.manifest.get("options", {}).get("fit") or DEFAULT_FIT,
                "dataset": dataset_record(dataset)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"
