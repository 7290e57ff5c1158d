"""One description of a feature set: what to extract, parsed once, used everywhere.

Training, extraction, the API and the report all describe features with a
:class:`FeatureSpec`; it is the only thing that builds feature extractors. A spec is parsed
from any of the forms a user or a file writes:

* a name, components joined by "+": ``"hog"``, ``"hog+color"``;
* a name with parameters: ``("hog+color", {"hog__orientations": 12, "space": "lab"})``;
* a config dict, as pipeline files and ``model.json`` hold it:
  ``{"name": "hog+color", "params": {...}}`` or
  ``{"name": "hog2", "components": [{"name": "hog", "params": {"pixels_per_cell": 4}}, ...]}``
  (components may repeat: HOG at two cell sizes).

It validates every value, builds the transformer (:meth:`FeatureSpec.build`), gives the
output dimension for an image size without computing anything (:meth:`FeatureSpec.n_features`),
the effective parameters (defaults filled in) and a stable key (:meth:`FeatureSpec.key`).
Where and how fast features are computed (``n_jobs``, ``device``, ``backend``) is not part of
a spec: it is chosen when building.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cvpipe.errors import ConfigError
from cvpipe.storage import canonical_json, to_jsonable

if TYPE_CHECKING:
    from cvpipe.features.transformers import ImageFeatureUnion, _ImageTransformer

#: Component names, in the order they are listed to users.
FEATURE_NAMES = ("hog", "color", "pixels", "scattering", "patches")
_ALIASES = {"colour": "color", "hist": "color", "raw": "pixels", "learned": "patches",
            "scatter": "scattering"}


@functools.cache
def _classes() -> dict[str, type[_ImageTransformer]]:
    """Each component kind's transformer class, imported on first use (they bring
    scikit-learn, kymatio and PyTorch: a spec parsed for a command's help needs none)."""
    from cvpipe.features.patches import PatchFeatures
    from cvpipe.features.scattering import ScatteringTransformer
    from cvpipe.features.transformers import ColorHistogramTransformer, HOGTransformer, PixelTransformer

    return {"hog": HOGTransformer, "color": ColorHistogramTransformer, "pixels": PixelTransformer,
            "scattering": ScatteringTransformer, "patches": PatchFeatures}

#: A kind's revision, in its key when set: raised when its values change for the same
#: parameters, so that stores of the old values are not reused (scattering 2: negative
#: rounding errors no longer make the log compression NaN).
REVISIONS = {"scattering": 2}

#: Transformer parameters about where and how to compute, not what: never part of a spec.
RUNTIME_PARAMS = frozenset({"n_jobs", "device", "backend", "image_shape"})


def _without_runtime(value: Any) -> Any:
    """``value`` (params, or a config dict) with run-time options removed from its params."""
    if not isinstance(value, Mapping):
        return value
    if "name" in value:  # a config dict
        out = dict(value)
        if isinstance(out.get("params"), Mapping):
            out["params"] = _without_runtime(out["params"])
        if isinstance(out.get("components"), list):
            out["components"] = [_without_runtime(c) for c in out["components"]]
        return out
    return {k: v for k, v in value.items() if str(k).rpartition("__")[2] not in RUNTIME_PARAMS}


def _component_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"a feature component needs a name, not {name!r}")
    kind = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if kind not in FEATURE_NAMES:
        raise ConfigError(f"unknown feature {name!r}; choose from {', '.join(FEATURE_NAMES)} "
                          "(joined with '+')")
    return kind


@dataclass(frozen=True)
class FeatureComponent:
    """One extractor of a feature set: its kind and the parameters given for it."""

    kind: str
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def make(cls, kind: Any, params: Mapping[str, Any] | None = None) -> FeatureComponent:
        kind = _component_name(kind)
        params = dict(params or {})
        if not all(isinstance(k, str) for k in params):
            raise ConfigError(f"feature {kind!r}: parameter names must be strings")
        runtime = sorted(set(params) & RUNTIME_PARAMS)
        if runtime:
            raise ConfigError(f"feature {kind!r}: {', '.join(runtime)} say where features are "
                              "computed, not what they are; they are not part of a feature set")
        known = set(_classes()[kind]._get_param_names()) - RUNTIME_PARAMS
        unknown = sorted(set(params) - known)
        if unknown:
            raise ConfigError(f"feature {kind!r} has no parameter {', '.join(map(repr, unknown))}; "
                              f"its parameters: {', '.join(sorted(known))}")
        try:
            component = cls(kind, to_jsonable(params))
        except TypeError as exc:
            raise ConfigError(f"feature {kind!r}: {exc}") from None
        component.effective()  # validates every value
        return component

    def transformer(self, **runtime: Any) -> _ImageTransformer:
        """A new, unfitted transformer for this component."""
        return _classes()[self.kind](**self.params, **runtime)

    @property
    def stateful(self) -> bool:
        """True when the component learns from training images (``fit`` is not a formality)."""
        return hasattr(_classes()[self.kind], "get_state")

    def describe(self) -> str:
        """What this component computes, in a few words (the transformer's ``describe``)."""
        return self.transformer().describe()

    def effective(self) -> dict[str, Any]:
        """Every parameter's value, defaults included, as validated (JSON types)."""
        est = self.transformer()
        try:
            validated = est._validated_params()
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"feature {self.kind!r}: {exc}") from None
        if dataclasses.is_dataclass(validated):
            return to_jsonable(dataclasses.asdict(validated))
        if isinstance(validated, dict):  # every parameter, some of them normalised
            given = {k: v for k, v in est.get_params(deep=False).items() if k not in RUNTIME_PARAMS}
            values = to_jsonable({**given, **validated})
            # a parameter added later, at the default that computes what was computed before
            # it existed, is left out: the stores and keys written before stay valid
            added = getattr(type(est), "_added_defaults", {})
            return {k: v for k, v in values.items() if not (k in added and v == added[k])}
        return to_jsonable({"scale": validated})

    def n_features(self, image_shape: tuple[int, ...]) -> int:
        est = self.transformer()
        return int(est._n_out(tuple(int(s) for s in image_shape), est._validated_params()))


@dataclass(frozen=True)
class FeatureSpec:
    """A feature set: named components whose features are concatenated in order.

    Attributes
    ----------
    name : str
        A label for people and reports (``"hog+color"``, ``"hog2+color2"``); not part of the key.
    components : tuple of FeatureComponent
    """

    name: str
    components: tuple[FeatureComponent, ...]

    # ------------------------------------------------------------------ parsing

    @classmethod
    def parse(cls, features: str | Mapping[str, Any] | FeatureSpec,
              params: Mapping[str, Any] | None = None, *, drop_runtime: bool = False) -> FeatureSpec:
        """The spec that a name (plus ``params``), a config dict or a spec describes.

        Parameters
        ----------
        features : str, dict or FeatureSpec
            See the module's description of the forms.
        params : dict, optional
            With a name: ``<component>__<param>`` for one component, a plain ``<param>`` for
            every component that has it.
        drop_runtime : bool
            Ignore run-time options (``n_jobs``, ``device``, ...) found among the parameters
            instead of refusing them.

        Raises
        ------
        ConfigError
            Unknown component or parameter, a run-time option, or an invalid value.
        """
        if drop_runtime:
            features, params = _without_runtime(features), _without_runtime(params)
        if isinstance(features, FeatureSpec):
            if params:
                raise ConfigError("give parameters in the feature spec, not beside it")
            return features
        if isinstance(features, str):
            return cls._from_name(features, dict(params or {}))
        if not isinstance(features, Mapping):
            raise ConfigError(f"features must be a name or a config table, not {features!r}")
        unknown = set(features) - {"name", "params", "components"}
        if unknown:
            raise ConfigError(f"features config: unknown keys {sorted(unknown)} "
                              "(expected name, params or components)")
        name = features.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError("features config needs a non-empty 'name'")
        given = features.get("params") or {}
        if not isinstance(given, Mapping):
            raise ConfigError(f"features {name!r}: params must be a table")
        if "components" not in features:
            return cls._from_name(name, {**given, **dict(params or {})})
        if given or params:
            raise ConfigError(f"features {name!r}: give params per component, not beside 'components'")
        comps = features["components"]
        if not isinstance(comps, list) or not comps:
            raise ConfigError(f"features {name!r}: components must be a non-empty list")
        parts = []
        for c in comps:
            if not isinstance(c, Mapping) or set(c) - {"name", "params"}:
                raise ConfigError(f"features {name!r}: each component is {{name, params}}, not {c!r}")
            if not isinstance(c.get("params", {}), Mapping):
                raise ConfigError(f"features {name!r}: params of {c.get('name')!r} must be a table")
            parts.append(FeatureComponent.make(c.get("name"), c.get("params")))
        return cls(name.strip(), tuple(parts))

    @classmethod
    def _from_name(cls, name: str, params: dict[str, Any]) -> FeatureSpec:
        if not name.strip():
            raise ConfigError("feature name must be a non-empty string")
        kinds = [_component_name(p) for p in name.split("+")]
        if len(set(kinds)) != len(kinds):
            raise ConfigError(f"feature {name!r} names a component twice; use 'components' "
                              "for two extractors of one kind")
        per: dict[str, dict[str, Any]] = {k: {} for k in kinds}
        for key, value in params.items():
            if not isinstance(key, str):
                raise ConfigError(f"feature parameter names must be strings, not {key!r}")
            if "__" in key:
                comp, _, sub = key.partition("__")
                comp = _ALIASES.get(comp, comp)
                if comp not in per:
                    raise ConfigError(f"parameter {key!r}: {comp!r} is not part of {name!r}")
                per[comp][sub] = value
                continue
            if key in RUNTIME_PARAMS:
                raise ConfigError(f"{key} says where features are computed, not what they are; "
                                  "it is not part of a feature set")
            takers = [k for k in kinds if key in _classes()[k]._get_param_names()]
            if not takers:
                raise ConfigError(f"no component of {name!r} takes a parameter {key!r}")
            for k in takers:
                per[k].setdefault(key, value)
        return cls(name.strip(), tuple(FeatureComponent.make(k, per[k]) for k in kinds))

    def with_params(self, overrides: Any) -> FeatureSpec:
        """A copy with ``overrides`` ({component kind: {parameter: value}}) merged into the
        declared parameters of every component of that kind.

        Raises
        ------
        ConfigError
            ``overrides`` is not such a table, names a kind the set lacks, or a parameter or
            value that kind does not take.
        """
        if not isinstance(overrides, Mapping) or not all(isinstance(v, Mapping)
                                                         for v in overrides.values()):
            raise ConfigError("feature_params must be a table {component: {parameter: value}}, "
                              f"not {overrides!r}")
        kinds = [c.kind for c in self.components]
        missing = sorted(set(overrides) - set(kinds))
        if missing:
            raise ConfigError(f"feature_params names {', '.join(map(repr, missing))}, not a "
                              f"component of {self.name!r} ({', '.join(kinds)})")
        return dataclasses.replace(self, components=tuple(
            FeatureComponent.make(c.kind, {**c.params, **overrides[c.kind]})
            if c.kind in overrides else c for c in self.components))

    # ------------------------------------------------------------------ what it is

    def to_dict(self) -> dict[str, Any]:
        """The config dict (the form ``model.json`` stores); :meth:`parse` reads it back."""
        return {"name": self.name,
                "components": [{"name": c.kind, "params": dict(c.params)} for c in self.components]}

    def effective_params(self) -> list[dict[str, Any]]:
        """``[{"name": kind, "params": every value}, ...]``, defaults included."""
        return [{"name": c.kind, "params": c.effective()} for c in self.components]

    @property
    def stateful(self) -> bool:
        """True when some component learns from training images: the transformer must be
        fitted on them, and what it learned is saved with the model."""
        return any(c.stateful for c in self.components)

    def key(self) -> str:
        """Stable 16-hex-digit key of what is computed (effective parameters; not the label)."""
        return self._key

    @functools.cached_property
    def _key(self) -> str:  # computed once: the API asks for it on every request
        described = [{**c, "revision": REVISIONS[c["name"]]} if c["name"] in REVISIONS else c
                     for c in self.effective_params()]
        return hashlib.sha256(canonical_json(described).encode()).hexdigest()[:16]

    def n_features(self, image_shape: tuple[int, ...]) -> int:
        """Length of one image's feature vector, from the parameters alone.

        Parameters
        ----------
        image_shape : (H, W) or (H, W, C)

        Raises
        ------
        ConfigError
            The images are too small for a component (a HOG block larger than the image ...).
        """
        return sum(c.n_features(image_shape) for c in self.components)

    def check(self, image_shape: tuple[int, ...]) -> int:
        """:meth:`n_features`, with the error naming this feature set."""
        try:
            return self.n_features(image_shape)
        except ConfigError as exc:
            raise ConfigError(f"features {self.name!r}: {exc}") from None

    # ------------------------------------------------------------------ building

    def build(self, *, n_jobs: int | None = -1, device: Any = None, backend: str | None = None,
              image_shape: tuple[int, ...] | None = None) -> _ImageTransformer | ImageFeatureUnion:
        """A new, unfitted scikit-learn transformer computing this feature set.

        Parameters
        ----------
        n_jobs, device, backend
            Where and how to compute (see :func:`cvpipe.features.hog`).
        image_shape : tuple, optional
            ``(H, W[, C])`` to accept flattened rows.

        Returns
        -------
        transformer or ImageFeatureUnion
            The component's transformer, or the union of the components (steps named after
            them, ``hog_0``, ``hog_1`` ... when a kind repeats), float32 ``(N, D)`` out.
        """
        runtime = {"n_jobs": n_jobs, "device": device, "backend": backend, "image_shape": image_shape}
        steps = [c.transformer(**runtime) for c in self.components]
        for est in steps:  # the run-time options' errors here, where they are given
            est._validated_params()
        if len(steps) == 1:
            return steps[0]
        from cvpipe.features.transformers import ImageFeatureUnion

        return ImageFeatureUnion(list(zip(self.step_names(), steps, strict=True)))

    def fit(self, images: Any, *, cache: MutableMapping[str, Any] | None = None, **runtime: Any
            ) -> _ImageTransformer | ImageFeatureUnion:
        """A transformer of this feature set, its learning components fitted on ``images``.

        Parameters
        ----------
        images : (N, H, W[, C]) array
            Training images (labels are never needed).
        cache : dict, optional
            ``(fitted component, seconds its fit took)`` by the component's effective
            parameters: one fitted here is stored, one found is reused (the same patch
            dictionary inside two feature sets is learned once; :meth:`fit_seconds` still
            counts it for each). The caller keeps one cache per training set.
        **runtime
            As for :meth:`build`.
        """
        extractor = self.build(**runtime)
        steps = _steps(extractor, self)
        for i, (component, (name, est)) in enumerate(zip(self.components, steps, strict=True)):
            if not component.stateful:
                continue
            key = _component_key(component)
            if cache is not None and key in cache:
                fitted = cache[key][0]
            else:
                start = time.perf_counter()
                fitted = est.fit(images)
                if cache is not None:
                    cache[key] = (fitted, time.perf_counter() - start)
            if len(steps) == 1:
                return fitted
            extractor.transformer_list[i] = (name, fitted)
        return extractor

    def fit_seconds(self, cache: Mapping[str, Any]) -> float:
        """Seconds the learning components of this feature set took to fit (from a :meth:`fit`
        cache), counted in full even where another feature set shared them."""
        return sum(cache[_component_key(c)][1] for c in self.components
                   if c.stateful and _component_key(c) in cache)

    def step_names(self) -> list[str]:
        """Names of the components in the built union: their kinds, or ``<kind>_<i>`` when a
        kind repeats."""
        kinds = [c.kind for c in self.components]
        return kinds if len(set(kinds)) == len(kinds) else [f"{k}_{i}" for i, k in enumerate(kinds)]

    def __str__(self) -> str:
        return self.name


def extractor_state(extractor: Any, spec: FeatureSpec) -> dict[str, np.ndarray]:
    """What a fitted extractor of ``spec`` learned, as named float32 arrays (``<step>.<name>``);
    empty for a feature set that learns nothing."""
    steps = _steps(extractor, spec)
    return {f"{name}.{key}": value for name, est in steps if hasattr(est, "get_state")
            for key, value in est.get_state().items()}


def restore_extractor(extractor: Any, spec: FeatureSpec, state: Mapping[str, np.ndarray],
                      image_shape: tuple[int, ...]) -> Any:
    """``extractor`` (built from ``spec``) with the learned arrays of :func:`extractor_state`."""
    for name, est in _steps(extractor, spec):
        if hasattr(est, "set_state"):
            prefix = f"{name}."
            est.set_state({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)},
                          image_shape)
        else:
            est.fit(np.zeros((1, *image_shape), np.uint8))  # stateless: records the input shape
    return extractor


def _component_key(component: FeatureComponent) -> str:
    return canonical_json([component.kind, component.effective()])


def _steps(extractor: Any, spec: FeatureSpec) -> list[tuple[str, Any]]:
    if len(spec.components) == 1:
        return [(spec.step_names()[0], extractor)]
    return list(extractor.transformer_list)


def fit_to_shape(extractor: Any, image_shape: tuple[int, ...]) -> Any:
    """Fit a stateless extractor (built by :meth:`FeatureSpec.build`) to images of one shape
    ``(H, W, C)`` without any image: its parameters are checked once, here, and a batch of
    another shape is refused. Returns the extractor."""
    parts = [t for _, t in getattr(extractor, "transformer_list", [("", extractor)])]
    if any(isinstance(t, _classes()["patches"]) for t in parts):
        raise ConfigError("learned features are fitted on training images, not to a shape")
    return extractor.fit(np.zeros((1, *image_shape), np.uint8))


def make_features(name: str, **params: Any) -> _ImageTransformer | ImageFeatureUnion:
    """Build a feature extractor from a name such as ``"hog"``, ``"color"`` or ``"hog+color"``.

    Parameters
    ----------
    name : str
        Component names joined by "+": ``hog`` (:class:`HOGTransformer`), ``color`` (alias
        ``colour``; :class:`ColorHistogramTransformer`), ``pixels`` (alias ``raw``;
        :class:`PixelTransformer`).
    **params
        ``<component>__<param>`` sets a parameter of one component (``hog__orientations=12``,
        ``color__space="lab"``); a plain ``<param>`` goes to every component that has it.
        ``n_jobs``, ``device``, ``backend`` and ``image_shape`` say where to compute.

    Returns
    -------
    transformer or ImageFeatureUnion
        See :meth:`FeatureSpec.build`.

    Raises
    ------
    ConfigError
        Unknown or repeated component, a parameter no component takes, or an invalid value.
    """
    runtime = {k: params.pop(k) for k in list(params) if k in RUNTIME_PARAMS}
    return FeatureSpec.parse(name, params).build(**runtime)
