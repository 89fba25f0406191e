"""Layer-stack models: an ordered list of layers over named fields.

A model is described by its ``architecture`` (the class of its ``Core``), the
shared ``build_params`` and the list of ``layers`` (``{name, params}``), exactly
as in a Modelhub entry of Enerzyme's train.yaml.  Every layer receives each build parameter
whose name is one of its constructor parameters; its own ``params`` win.  An
unknown layer name, an unknown parameter or a missing required parameter is a
:class:`~nnpflow.errors.ConfigError` naming the layer.

A ``Distance`` layer is prepended to every stack (it turns pair lists into
distances, differentiable in the positions).  When the stack holds a ``Force``
layer, the positions are made to require gradients and the forward pass runs
with gradients enabled even inside ``torch.no_grad()``.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .cores import CORES, core_class
from .fields import TARGET_NAMES
from .layers import LAYERS, Distance, Force, Layer

#: layer name -> {parameter: value} for model files written before the parameter
#: existed, where today's default computes something else: ``AtomicAffine`` applied
#: ``x * scale + shift`` before ``order`` (default now Enerzyme's shift, then scale)
SAVED_BEFORE: dict[str, dict[str, Any]] = {
    "AtomicAffine": {"order": "scale_then_shift"},
}

#: fields a batch may provide before the first layer
BATCH_FIELDS = ("N", "Ra", "Za", "Q", "batch_seg")
_LR_FIELDS = ("idx_i", "idx_j", "offsets")
_SR_FIELDS = ("idx_i_sr", "idx_j_sr", "offsets_sr")


def _init_parameters(cls) -> dict[str, inspect.Parameter]:
    params = dict(inspect.signature(cls.__init__).parameters)
    params.pop("self", None)
    return {k: p for k, p in params.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def known_build_params() -> set[str]:
    """Names of all constructor parameters of registered layers and cores."""
    names: set[str] = set()
    for cls in LAYERS.values():
        names.update(_init_parameters(cls))
    for arch in CORES:
        names.update(_init_parameters(core_class(arch)))
    return names


def _suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def resolve_layer_params(cls, build_params: Mapping[str, Any], params: Mapping[str, Any] | None,
                         where: str) -> dict[str, Any]:
    """Constructor arguments of layer ``cls``: its defaults, then the build
    parameters it takes, then its own ``params``.  Errors name ``where``."""
    accepted = _init_parameters(cls)
    params = dict(params or {})
    for key in params:
        if key not in accepted:
            raise ConfigError(f"{where}.params.{key}: unknown parameter{_suggest(key, accepted)}; "
                              f"this layer takes: {', '.join(accepted) or 'no parameters'}")
    resolved: dict[str, Any] = {}
    for key, p in accepted.items():
        if key in params:
            resolved[key] = params[key]
        elif key in build_params:
            resolved[key] = build_params[key]
        elif p.default is not inspect.Parameter.empty:
            resolved[key] = p.default
        else:
            raise ConfigError(f"{where}: missing parameter {key!r}; give it in the layer's "
                              "params or in build_params")
    return resolved


def normalise_layer_specs(layers: Sequence, where: str) -> list[dict]:
    """``[{name, params}]`` from a Modelhub ``layers`` list (strings allowed)."""
    if not isinstance(layers, Sequence) or isinstance(layers, (str, bytes)) or not layers:
        raise ConfigError(f"{where}: expected a non-empty list of layers")
    out = []
    for k, spec in enumerate(layers):
        here = f"{where}[{k}]"
        if isinstance(spec, str):
            spec = {"name": spec}
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{here}: expected a mapping with 'name' and optional 'params'")
        unknown = set(spec) - {"name", "params"}
        if unknown:
            raise ConfigError(f"{here}.{sorted(unknown)[0]}: unknown key; a layer has 'name' "
                              "and 'params'")
        name = spec.get("name")
        if not isinstance(name, str):
            raise ConfigError(f"{here}.name: expected a layer name, got {name!r}")
        params = spec.get("params") or {}
        if not isinstance(params, Mapping):
            raise ConfigError(f"{here}.params: expected a mapping, got {params!r}")
        out.append({"name": name, "params": dict(params)})
    return out


class LayerStack(nn.Module):
    """A model made of layers over named fields (see :mod:`nnpflow.models.fields`).

    Parameters
    ----------
    architecture : name of the core (``"SchNet"``), see :data:`nnpflow.models.cores.CORES`.
    layers : ``[{"name": ..., "params": {...}}, ...]`` in order.
    build_params : parameters shared by all layers.
    where : prefix for error messages (e.g. ``"Modelhub.FF01"``).

    Attributes
    ----------
    requirements : ``{"cutoff_sr": float | None, "cutoff_lr": float | None}``; the
        pair lists a batch must hold (``cutoff_lr = inf``: all pairs).
    outputs : target names the model predicts (subset of E, Fa, Qa, Q, M2).
    unused_build_params : build parameters that no layer of this stack takes (e.g.
        ``Hartree_in_E`` without an ``ElectrostaticEnergy`` layer).
    """

    def __init__(self, architecture: str, layers: Sequence,
                 build_params: Mapping[str, Any] | None = None, where: str = "model"):
        super().__init__()
        build_params = dict(build_params or {})
        known = known_build_params()
        for key in build_params:
            if key not in known:
                raise ConfigError(f"{where}.build_params.{key}: no layer takes this parameter"
                                  f"{_suggest(key, known)}")
        core_class(architecture)  # validates the architecture name early
        specs = normalise_layer_specs(layers, f"{where}.layers")
        self.architecture = architecture
        self.build_params = build_params
        modules: list[Layer] = [Distance()]
        resolved_specs = []
        used: set[str] = set()
        for k, spec in enumerate(specs):
            name = spec["name"]
            here = f"{where}.layers[{k}] ({name})"
            if name == "Core":
                cls = core_class(architecture)
            elif name in LAYERS:
                cls = LAYERS[name]
            else:
                raise ConfigError(f"{where}.layers[{k}].name: unknown layer {name!r}"
                                  f"{_suggest(name, [*LAYERS, 'Core'])}; known: "
                                  f"{', '.join(['Core', *LAYERS])}")
            kwargs = resolve_layer_params(cls, build_params, spec["params"], here)
            used.update(k2 for k2 in kwargs if k2 in build_params)
            try:
                modules.append(cls(**kwargs))
            except ConfigError as exc:
                raise ConfigError(f"{here}: {exc}") from None
            resolved_specs.append({"name": name, "params": kwargs})
        self.layer_specs = resolved_specs
        self.layers = nn.ModuleList(modules)
        self.unused_build_params = sorted(set(build_params) - used)
        self.requirements = self._merge_requirements(where)
        self.outputs = self._check_fields(where)
        self.has_force = any(isinstance(m, Force) for m in modules)

    # ------------------------------------------------------------ validation
    def _merge_requirements(self, where: str) -> dict[str, float | None]:
        req: dict[str, float | None] = {"cutoff_sr": None, "cutoff_lr": None}
        for layer in self.layers:
            for key, value in layer.requirements().items():
                req[key] = value if req[key] is None else max(req[key], value)
        return req

    def _check_fields(self, where: str) -> list[str]:
        available = set(BATCH_FIELDS)
        if self.requirements["cutoff_lr"] is not None:
            available.update(_LR_FIELDS)
        if self.requirements["cutoff_sr"] is not None:
            available.update(_SR_FIELDS)
        written: set[str] = set()
        for k, layer in enumerate(self.layers):
            if isinstance(layer, Distance):
                new = {"Dij"} if "idx_i" in available else set()
                if "idx_i_sr" in available:
                    new.add("Dij_sr")
                available |= new
                continue
            spec = self.layer_specs[k - 1]
            missing = [f for f in layer.reads if f not in available]
            if missing:
                raise ConfigError(f"{where}.layers[{k - 1}] ({spec['name']}) reads "
                                  f"{', '.join(missing)}, which no earlier layer writes")
            available.update(layer.writes)
            written.update(layer.writes)
        return [t for t in TARGET_NAMES if t in written]

    # ------------------------------------------------------------------ use
    def config(self) -> dict:
        """JSON-compatible description: ``architecture``, ``build_params``, ``layers``."""
        return {"architecture": self.architecture, "build_params": dict(self.build_params),
                "layers": [{"name": s["name"], "params": dict(s["params"])}
                           for s in self.layer_specs]}

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str = "model") -> "LayerStack":
        """Rebuild a model from its saved :meth:`config` (a model file's ``config``).

        A saved config lists every constructor parameter of every layer.  A
        parameter one lacks was added to nnpflow after the file was written; it
        takes the value that reproduces what the writing code computed
        (:data:`SAVED_BEFORE`) where that differs from today's default.
        """
        layers = []
        for spec in config["layers"]:
            spec = dict(spec) if isinstance(spec, Mapping) else spec
            if isinstance(spec, dict) and spec.get("name") in SAVED_BEFORE:
                params = dict(spec.get("params") or {})
                for key, value in SAVED_BEFORE[spec["name"]].items():
                    params.setdefault(key, value)
                spec["params"] = params
            layers.append(spec)
        return cls(config["architecture"], layers, config.get("build_params"), where=where)

    @property
    def max_Za(self) -> int | None:
        """The largest atomic number the per-element tables accept (``None``: any)."""
        values = [m.max_Za for m in self.layers if hasattr(m, "max_Za")]
        return min(values) if values else None

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run every layer on a copy of ``batch``; returns all fields."""
        fields = dict(batch)
        if not self.has_force:
            for layer in self.layers:
                fields = layer(fields)
            return fields
        with torch.enable_grad():
            if not fields["Ra"].requires_grad:
                fields["Ra"] = fields["Ra"].detach().requires_grad_(True)
            for layer in self.layers:
                fields = layer(fields)
        return fields


def build_layer_stack(model_config: Mapping[str, Any], where: str = "model") -> LayerStack:
    """A :class:`LayerStack` from a Modelhub entry (``architecture``, ``build_params``,
    ``layers``)."""
    return LayerStack(model_config["architecture"], model_config["layers"],
                      model_config.get("build_params"), where=where)

