"""The port adapter for cprop-ref's JAX port (``cprop_ref.jax``, optax transformations), with
jit-compiled steps: ``cprop-ref verify cprop_ref.conformance:jax_port``.

What the protocol asks and optax does not have, the adapter supplies:

- *per-tensor state*: torch and the reference keep a state (and a step count) per parameter
  tensor and skip a tensor whose gradient is ``None``; optax keeps one step count per
  transformation. The adapter gives each tensor its own optax state and steps all of them in
  one jitted function, keeping (by a ``where`` on a per-tensor flag) the state and parameter of
  a tensor that received no gradient;
- *dtypes*: runs of float64 configurations execute under ``jax.enable_x64``; bfloat16 arrays
  arrive in their float32 carrier (:mod:`.dtypes`) and are converted exactly, both ways;
- *subnormal numbers*: XLA on the CPU runs with denormals flushed to zero (jaxlib sets the
  processor's FTZ/DAZ flags while a computation runs), so gradual underflow, which the reference
  follows, cannot be reproduced there. A step whose inputs (parameters, gradients, the injected
  state) hold a number that is subnormal in the compute dtype (float32 for 16-bit parameters,
  whose subnormal float16 values are normal float32 ones) is declined as
  :class:`~.protocol.Unsupported` and counted by the harness, not compared;
- *resume*: ``save()`` is what a JAX user checkpoints, the state pytree fetched to the host
  (``jax.device_get``) and pickled; ``restore`` puts it back on the device.
"""

from __future__ import annotations

import contextlib
import functools
import json
import pickle
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .config import PortConfig
from .dtypes import compute_dtype
from .protocol import Unsupported

try:
    import jax
    import jax.numpy as jnp
    import optax

    from .. import jax as cprop_jax
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "cprop_ref.conformance.jax_adapter needs JAX and optax, the optional 'jax' extra: pip install 'cprop-ref[jax]'"
    ) from err

_DTYPES = {"float16": jnp.float16, "float32": jnp.float32, "float64": jnp.float64, "bfloat16": jnp.bfloat16}


def build_transformation(config: PortConfig) -> optax.GradientTransformation:
    """The ``cprop_ref.jax`` transformation for ``config`` (the authors' names mapped to the port's)."""
    hp = dict(config.hyperparams)
    if config.optimizer == "CProp":
        base = dict(config.base_hyperparams)
        base["learning_rate"] = base.pop("lr")
        inner = {"SGD": cprop_jax.sgd, "Adam": cprop_jax.adam, "AdamW": cprop_jax.adamw}[config.base or ""](**base)
        return cprop_jax.cprop(inner, **hp)
    hp["learning_rate"] = hp.pop("lr")
    return {"CPropSGD": cprop_jax.cprop_sgd, "CPropAdam": cprop_jax.cprop_adam}[config.optimizer](**hp)


def _subnormal(dtype: str, *arrays: Any) -> bool:
    """Whether any of ``arrays`` holds a number that is subnormal in ``dtype``'s compute dtype."""
    computed = compute_dtype(dtype)
    tiny = np.finfo(computed).tiny
    for x in arrays:
        if x is None or np.size(x) == 0:
            continue
        a = np.abs(np.asarray(x).astype(computed))
        if np.any((a > 0.0) & (a < tiny)):
            return True
    return False


_FLUSHED = (
    "a subnormal input: XLA on the CPU flushes subnormal numbers to zero (FTZ/DAZ), so gradual "
    "underflow cannot be followed"
)


def _step_all(tx: optax.GradientTransformation) -> Any:
    """One step of every tensor, each with its own state; ``present[k]`` false keeps tensor
    ``k``'s parameter and state as they were (the protocol's ``None`` gradient)."""

    def step(params: list[Any], grads: list[Any], states: list[Any], present: list[Any]) -> Any:
        new_params, new_states = [], []
        for p, g, state, has in zip(params, grads, states, present):
            updates, new_state = tx.update(g, state, p)
            new_params.append(jnp.where(has, optax.apply_updates(p, updates), p))
            new_states.append(jax.tree.map(lambda a, b, h=has: jnp.where(h, a, b), new_state, state))
        return new_params, new_states

    return step


@functools.lru_cache(maxsize=64)
def _compiled(config_json: str) -> tuple[optax.GradientTransformation, Any]:
    """The transformation of a configuration and its jitted step, kept across runs of the same
    configuration (a resumed run, the golden fixtures' dtypes): jit compiles once per shapes."""
    tx = build_transformation(PortConfig.from_json(json.loads(config_json)))
    return tx, jax.jit(_step_all(tx))


class JaxRun:
    """A ``cprop_ref.jax`` transformation behind the port protocol, one optax state per tensor."""

    def __init__(self, config: PortConfig, params: Sequence[np.ndarray]) -> None:
        self.config = config
        self.tx, self._step = _compiled(json.dumps(config.to_json(), sort_keys=True))
        self.dtype = _DTYPES[config.dtype]
        with self._precision():
            self.tensors = [self._to_jax(p) for p in params]
            self.states = [self.tx.init(p) for p in self.tensors]
        self.stepped = [False] * len(self.tensors)

    def _to_jax(self, x: np.ndarray) -> Any:
        """A protocol array as a JAX array of the configuration's dtype (bfloat16 from its carrier, exactly)."""
        return jnp.asarray(np.array(x, copy=True)).astype(self.dtype)

    def _precision(self) -> contextlib.AbstractContextManager[Any]:
        return cprop_jax.enable_x64() if self.config.dtype == "float64" else contextlib.nullcontext()

    def step(self, grads: Sequence[np.ndarray | None]) -> None:
        if _subnormal(self.config.dtype, *grads, *self.params()):
            raise Unsupported(_FLUSHED)
        with self._precision():
            gs = [jnp.zeros_like(p) if g is None else self._to_jax(g) for p, g in zip(self.tensors, grads)]
            present = [jnp.asarray(g is not None) for g in grads]
            self.tensors, self.states = self._step(self.tensors, gs, self.states, present)
        self.stepped = [s or g is not None for s, g in zip(self.stepped, grads)]

    def params(self) -> list[np.ndarray]:
        """Copies on the host; bfloat16 as its float32 carrier, exactly."""
        return [np.array(p.astype(jnp.float32) if p.dtype == jnp.bfloat16 else p, copy=True) for p in self.tensors]

    def save(self) -> bytes:
        """The optimizer states as a JAX user checkpoints them: fetched to the host and pickled."""
        return pickle.dumps((jax.device_get(self.states), list(self.stepped)))

    def restore(self, data: bytes) -> None:
        """The states :meth:`save` wrote, put back on the device into this fresh run."""
        states, stepped = pickle.loads(data)
        with self._precision():
            self.states = jax.tree.map(jnp.asarray, states)
        self.stepped = list(stepped)

    def _statistics(self) -> Iterator[tuple[Any, Any, Any] | None]:
        for state, stepped in zip(self.states, self.stepped):
            yield cprop_jax.cprop_statistics(state) if stepped else None

    def scales(self) -> list[np.ndarray | None]:
        """The scale each tensor's last step applied (``None`` before its first gradient)."""
        return [np.array(st.scale, copy=True) if done else None for st, done in zip(self.states, self.stepped)]

    def cprop_state(self) -> list[tuple[np.ndarray, np.ndarray, int] | None]:
        return [None if st is None else (np.array(st[0]), np.array(st[1]), int(st[2])) for st in self._statistics()]

    def load_state(self, states: Sequence[dict[str, Any]]) -> None:
        """The protocol's per-tensor entries as the port's NamedTuple states (``docs/jax.md``)."""
        if _subnormal(self.config.dtype, *(v for st in states for k, v in st.items() if k != "step")):
            raise Unsupported(_FLUSHED)
        cfg = self.config
        with self._precision():
            new = []
            for old, st in zip(self.states, states):
                t = jnp.asarray(int(st["step"]), jnp.int32)

                def arr(key: str, like: Any, st: dict[str, Any] = st) -> Any:
                    return None if like is None else jnp.asarray(np.asarray(st[key]), like.dtype)

                if cfg.optimizer == "CPropSGD":
                    has_buffer = st.get("momentum_buffer") is not None
                    buf = arr("momentum_buffer", old.momentum_buffer) if has_buffer else old.momentum_buffer
                    new.append(
                        old._replace(
                            count=t,
                            m=arr("cprop_m", old.m),
                            v=arr("cprop_v", old.v),
                            momentum_buffer=buf,
                            momentum_count=t if has_buffer else jnp.zeros_like(t),
                        )
                    )
                elif cfg.optimizer == "CPropAdam":
                    # Shared moments (cprop_m is None in the state) come from exp_avg / exp_avg_sq.
                    new.append(
                        old._replace(
                            count=t,
                            exp_avg=arr("exp_avg", old.exp_avg),
                            exp_avg_sq=arr("exp_avg_sq", old.exp_avg_sq),
                            max_exp_avg_sq=arr("max_exp_avg_sq", old.max_exp_avg_sq),
                            cprop_m=arr("cprop_m", old.cprop_m),
                            cprop_v=arr("cprop_v", old.cprop_v),
                        )
                    )
                else:
                    inner = old.inner
                    if cfg.base == "SGD":
                        has_buffer = st.get("momentum_buffer") is not None
                        buf = arr("momentum_buffer", inner.momentum_buffer) if has_buffer else inner.momentum_buffer
                        inner = inner._replace(count=t if has_buffer else jnp.zeros_like(t), momentum_buffer=buf)
                    else:
                        inner = inner._replace(
                            count=t,
                            exp_avg=arr("exp_avg", inner.exp_avg),
                            exp_avg_sq=arr("exp_avg_sq", inner.exp_avg_sq),
                            max_exp_avg_sq=arr("max_exp_avg_sq", inner.max_exp_avg_sq),
                        )
                    new.append(old._replace(count=t, m=arr("cprop_m", old.m), v=arr("cprop_v", old.v), inner=inner))
            self.states = new
        self.stepped = [True] * len(self.tensors)


def jax_port(config: PortConfig, params: Sequence[np.ndarray]) -> JaxRun:
    """cprop-ref's JAX port (``cprop_ref.jax``), each step one jit-compiled call, on JAX's default device."""
    if config.dtype not in _DTYPES:
        raise Unsupported(f"dtype {config.dtype}")
    return JaxRun(config, params)
