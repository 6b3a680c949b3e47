"""Methods: a model + its losses + its training recipe, found by name.

``create_method("ume_mma", p_drop=0.3)`` builds a registered method with hyper-parameter
overrides; ``list_methods()`` drives CLI choices and test parametrisation (timm-style).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from mmfast.methods.base import FitResult, FusionModel, Method, ModelSpec

__all__ = ["register_method", "create_method", "list_methods", "method_defaults", "Method",
           "ModelSpec", "FitResult", "FusionModel"]

_REGISTRY: dict[str, tuple[type[Method], dict[str, Any]]] = {}


def register_method(name: str, **defaults: Any) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: register ``cls`` under ``name``; ``defaults`` make a named variant
    (e.g. ``register_method("crmt_at", variant="at")``). Stack it to register several."""

    def decorator(cls: type[Method]) -> type[Method]:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} is already registered")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(defaults) - fields
        if unknown:
            raise ValueError(f"defaults {sorted(unknown)} are not fields of {cls.__name__}")
        _REGISTRY[name] = (cls, dict(defaults))
        return cls

    return decorator


def _load_builtin() -> None:
    # Importing the modules runs their @register_method decorators.
    from mmfast.methods import (  # noqa: F401
        crmt,
        distill,
        dmrnet,
        gaussian_aug,
        joint,
        late,
        mmanet,
        rivals,
        trml,
        udml,
        ume_mma,
    )


def list_methods() -> list[str]:
    """Names of every registered method, sorted."""
    _load_builtin()
    return sorted(_REGISTRY)


def method_defaults(name: str) -> dict[str, Any]:
    """The hyper-parameter defaults a registered name adds to its class."""
    _load_builtin()
    return dict(_lookup(name)[1])


def _lookup(name: str) -> tuple[type[Method], dict[str, Any]]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; expected one of {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def create_method(name: str, **overrides: Any) -> Method:
    """An instance of the method registered as ``name`` with hyper-parameter overrides."""
    _load_builtin()
    cls, defaults = _lookup(name)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"method {name!r} has no hyper-parameters {sorted(unknown)}; "
                         f"expected some of {sorted(fields - {'encoders'})}")
    method = cls(**{**defaults, **overrides})
    method.registered_name = name
    return method
