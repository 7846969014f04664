"""Short golden trajectories that pin the reference against silent drift.

``python -m tests.golden_core_cases`` (re)writes ``tests/golden_core/``: a manifest
(``manifest.json``: each case's optimizer, hyperparameters, dtype) and one ``.npz`` per case
with the initial parameters, the gradients of every step (NaN marks "no gradient" for a
whole parameter) and the expected parameters and scales after every step.
``tests/test_core_golden.py`` replays them and demands bit-identical results. Regenerate only
for an intended change of the numbers, and say why in the commit message.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

import cprop_ref
from tests.optimizer_catalogue import BY_NAME, CPROP_PREFIX, OptimizerInfo, OptimizerInput, entries

GOLDEN_DIR = Path(__file__).parent / "golden_core"
SHAPES = [(5,), (2, 3), ()]
STEPS = 12


def golden_case(info: OptimizerInfo, configuration: OptimizerInput, dtype: str, cdf: str | None) -> dict[str, Any]:
    """A case as the manifest records it: the class's keyword arguments, or for the wrapper
    its base's name and keyword arguments and the wrapper's own (``beta``, ``c``, ``eps``, ``cdf``)."""
    hyperparameters = configuration.resolved(cdf)
    if not info.wraps:
        return {"optimizer": info.name, "dtype": dtype, "kwargs": hyperparameters}
    base = {k: v for k, v in hyperparameters.items() if not k.startswith(CPROP_PREFIX)}
    cprop = {k[len(CPROP_PREFIX) :]: v for k, v in hyperparameters.items() if k.startswith(CPROP_PREFIX)}
    return {"optimizer": info.cls.__name__, "dtype": dtype, "base": info.base.__name__, "kwargs": base, "cprop": cprop}


def golden_cases() -> list[dict[str, Any]]:
    """The ``golden`` configurations of the optimizer catalogue (``tests/optimizer_catalogue.py``):
    per dtype, the CProp optimizers in every CDF, then those without CProp."""
    cases = []
    for dtype in ("float32", "float64"):
        for cdf in cprop_ref.CDF_NAMES:
            cases += [golden_case(info, inp, dtype, cdf) for info, inp in entries("golden") if info.cprop]
        cases += [golden_case(info, inp, dtype, None) for info, inp in entries("golden") if not info.cprop]
    return cases


CASES: list[dict[str, Any]] = golden_cases()


def _info(case: dict[str, Any]) -> OptimizerInfo:
    name = f"CProp({case['base']})" if "base" in case else case["optimizer"]
    return BY_NAME[name]


def build(case: dict[str, Any], params: list[np.ndarray]) -> Any:
    # The golden files pin the NumPy reference; the Numba backend is held to it within the
    # tolerance policy instead (tests/test_backends*.py).
    cprop = {f"{CPROP_PREFIX}{k}": v for k, v in case.get("cprop", {}).items()}
    return _info(case).make(params, backend="numpy", **case["kwargs"], **cprop)


def inputs(index: int, dtype: str) -> tuple[list[np.ndarray], list[list[np.ndarray | None]]]:
    rng = np.random.default_rng(1000 + index)
    params = [rng.standard_normal(shape).astype(dtype) for shape in SHAPES]
    drift = [rng.choice([-1.0, 0.0, 0.5], size=shape) for shape in SHAPES]
    stream = []
    for step in range(STEPS):
        grads: list[np.ndarray | None] = [(d + rng.standard_normal(s)).astype(dtype) for d, s in zip(drift, SHAPES)]
        if step % 5 == 4:
            grads[step % len(SHAPES)] = None
        stream.append(grads)
    return params, stream


def replay(
    case: dict[str, Any], params: list[np.ndarray], stream: list[list[np.ndarray | None]]
) -> dict[str, np.ndarray]:
    """Run ``case`` and stack, per parameter, its values and scales after every step
    (``params_k``, ``scales_k`` of shape ``(steps, *shape)``; NaN scale before the first gradient)."""
    params = [p.copy() for p in params]
    opt = build(case, params)
    history: dict[str, list[np.ndarray]] = {}
    for grads in stream:
        opt.step(grads)
        scales = opt.scales() if hasattr(opt, "scales") else None
        for k, p in enumerate(params):
            history.setdefault(f"params_{k}", []).append(p.copy())
            if scales is not None:
                s = np.full(p.shape, np.nan, np.float32) if scales[k] is None else scales[k]
                history.setdefault(f"scales_{k}", []).append(np.asarray(s, dtype=np.result_type(s)))
    return {key: np.stack(values) for key, values in history.items()}


def stacked_gradients(stream: list[list[np.ndarray | None]], dtype: str) -> dict[str, np.ndarray]:
    """``grads_k`` of shape ``(steps, *shape)``; an all-NaN row means "no gradient"."""
    return {
        f"grads_{k}": np.stack([np.full(shape, np.nan, dtype) if row[k] is None else row[k] for row in stream])
        for k, shape in enumerate(SHAPES)
    }


def unstack_gradients(stored: dict[str, np.ndarray]) -> list[list[np.ndarray | None]]:
    steps = stored["grads_0"].shape[0]
    return [
        [None if np.all(np.isnan(stored[f"grads_{k}"][t])) else stored[f"grads_{k}"][t] for k in range(len(SHAPES))]
        for t in range(steps)
    ]


def write() -> None:
    GOLDEN_DIR.mkdir(exist_ok=True)
    for old in GOLDEN_DIR.glob("case_*.npz"):
        old.unlink()
    manifest = []
    for index, case in enumerate(CASES):
        params, stream = inputs(index, case["dtype"])
        arrays = {f"initial_{k}": p for k, p in enumerate(params)}
        arrays.update(stacked_gradients(stream, case["dtype"]))
        arrays.update(replay(case, params, stream))
        name = f"case_{index:03d}.npz"
        np.savez_compressed(GOLDEN_DIR / name, **arrays)
        manifest.append({"file": name, **case})
    (GOLDEN_DIR / "manifest.json").write_text(json.dumps({"version": 1, "steps": STEPS, "cases": manifest}, indent=1))


if __name__ == "__main__":
    write()
