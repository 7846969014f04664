"""What the harness asks a port to build: an optimizer configuration.

A :class:`PortConfig` names one of the five CProp optimizers of ``docs/algorithm.md``, its
hyperparameters (the authors' names) and the dtype of the parameters:

============  ==============================  =============================================
optimizer     base                            hyperparams / base_hyperparams
============  ==============================  =============================================
CPropSGD      ``None``                        lr, cprop_beta, cprop_c, cprop_eps, cprop_cdf,
                                              momentum, dampening, weight_decay, nesterov
CPropAdam     ``None``                        lr, cprop_beta, cprop_c, cprop_eps, cprop_cdf,
                                              betas, eps, weight_decay, amsgrad
CProp         ``"SGD"``, ``"Adam"``,          hyperparams: beta, c, eps, cdf (the wrapper);
              ``"AdamW"``                     base_hyperparams: the base optimizer's
============  ==============================  =============================================

Configurations are plain data: :meth:`PortConfig.to_json` / :meth:`PortConfig.from_json`
round-trip them through the golden fixtures' manifest and the reproduction snippets.
``dtype`` is one of :data:`.dtypes.DTYPES` (float32, float64, float16, bfloat16).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .dtypes import DTYPES, carrier

OPTIMIZERS: tuple[str, ...] = ("CPropSGD", "CPropAdam", "CProp")
BASE_OPTIMIZERS: tuple[str, ...] = ("SGD", "Adam", "AdamW")
#: The base update each optimizer scales (the wrapper: each base), ``"sgd"`` or ``"adam"``: the
#: bounds (:mod:`.bounds`) and the strategies branch on it. An optimizer or base without an
#: entry is refused when a configuration is built, never counted as another family.
FAMILIES: dict[str, str] = {"CPropSGD": "sgd", "CPropAdam": "adam", "SGD": "sgd", "Adam": "adam", "AdamW": "adam"}


@dataclass(frozen=True)
class PortConfig:
    """One optimizer configuration (see the module docstring for the names)."""

    optimizer: str
    hyperparams: dict[str, Any]
    dtype: str = "float64"
    base: str | None = None
    base_hyperparams: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"PortConfig: invalid optimizer={self.optimizer!r}: one of {', '.join(OPTIMIZERS)}")
        if (self.optimizer == "CProp") != (self.base is not None):
            raise ValueError(f"PortConfig: base={self.base!r} must be given exactly when optimizer='CProp'")
        if self.base is not None and self.base not in BASE_OPTIMIZERS:
            raise ValueError(f"PortConfig: invalid base={self.base!r}: one of {', '.join(BASE_OPTIMIZERS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"PortConfig: invalid dtype={self.dtype!r}: one of {', '.join(DTYPES)}")
        scaled = self.base or self.optimizer
        if scaled not in FAMILIES:
            raise ValueError(
                f"PortConfig: {scaled!r} has no family (the base update it scales): add it to "
                f"cprop_ref/conformance/config.py FAMILIES ({', '.join(FAMILIES)} have one)"
            )

    @property
    def np_dtype(self) -> np.dtype:
        """The NumPy dtype of the protocol's arrays: the dtype itself, float32 for bfloat16
        (NumPy has none; the values are exactly bfloat16's, :mod:`.dtypes`)."""
        return carrier(self.dtype)

    @property
    def name(self) -> str:
        """``CPropSGD`` or ``CProp(Adam)``."""
        return self.optimizer if self.base is None else f"CProp({self.base})"

    @property
    def family(self) -> str:
        """``"sgd"`` or ``"adam"``: which base update the optimizer scales (:data:`FAMILIES`)."""
        return FAMILIES[self.base or self.optimizer]

    @property
    def decoupled_weight_decay(self) -> bool:
        return self.base == "AdamW"

    def cprop(self) -> dict[str, Any]:
        """CProp's own hyperparameters as ``beta``, ``c``, ``eps``, ``cdf``, whatever the optimizer."""
        if self.optimizer == "CProp":
            return {k: self.hyperparams[k] for k in ("beta", "c", "eps", "cdf")}
        return {k: self.hyperparams[f"cprop_{k}"] for k in ("beta", "c", "eps", "cdf")}

    def base_update(self) -> dict[str, Any]:
        """The hyperparameters of the update that CProp scales (``lr``, momentum, betas, ...)."""
        if self.optimizer == "CProp":
            return dict(self.base_hyperparams)
        return {k: v for k, v in self.hyperparams.items() if not k.startswith("cprop_")}

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "optimizer": self.optimizer,
            "hyperparams": _plain(self.hyperparams),
            "dtype": self.dtype,
        }
        if self.base is not None:
            out["base"] = self.base
            out["base_hyperparams"] = _plain(self.base_hyperparams)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PortConfig:
        def tuples(hp: dict[str, Any]) -> dict[str, Any]:
            return {k: (tuple(v) if k == "betas" else v) for k, v in hp.items()}

        try:
            return cls(
                optimizer=data["optimizer"],
                hyperparams=tuples(data["hyperparams"]),
                dtype=data.get("dtype", "float64"),
                base=data.get("base"),
                base_hyperparams=tuples(data.get("base_hyperparams", {})),
            )
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"PortConfig.from_json: not a configuration ({type(err).__name__}: {err})") from None

    def describe(self) -> str:
        """One line: ``CProp(Adam) float32 beta=0.9 c=1 ... | lr=0.01 ...``."""
        own = " ".join(f"{k}={v!r}" for k, v in self.hyperparams.items())
        base = " ".join(f"{k}={v!r}" for k, v in self.base_hyperparams.items())
        return f"{self.name} {self.dtype} {own}" + (f" | base: {base}" if base else "")


def _plain(hp: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps({k: (list(v) if isinstance(v, tuple) else v) for k, v in hp.items()}))
