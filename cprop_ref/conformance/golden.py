"""Golden fixtures: reference runs written as ``.npz`` files plus a JSON manifest, for ports
in any language (format in ``docs/conformance.md``, "Golden fixtures").

``write_fixtures(out)`` runs the reference on a fixed set of cases (every optimizer and
CDF, both dtypes, edge hyperparameters, 0-d / odd / 2-D tensors, missing gradients) and
writes, per case, ``<name>.npz`` with the inputs, the expected values after every step and
their elementwise tolerances. ``read_fixtures`` reads them back; ``check_fixtures`` runs a
port over them; ``recompute`` is the reference's own values for a stored case, which the
test-suite compares bit for bit with the stored ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .bounds import RunBounds
from .checks import _Comparer, _port_call, _read_outs, _start
from .config import PortConfig
from .dtypes import compute_dtype
from .reference import ReferenceRun
from .report import Coverage

FORMAT_NAME = "cprop-ref-golden"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHAPES: tuple[tuple[int, ...], ...] = ((), (3,), (2, 3))
STEPS = 12

#: The per-tensor arrays of a case file; ``{k}`` is the tensor index, ``S`` the step count.
LAYOUT: dict[str, str] = {
    "param{k}_initial": "(*shape) dtype: the initial parameter",
    "grad{k}": "(S, *shape) dtype: the gradient at each step (zeros where absent)",
    "grad{k}_present": "(S,) bool: whether the tensor receives a gradient at that step (else None / no step)",
    "param{k}": "(S, *shape) dtype: expected parameter after each step",
    "param{k}_tol": "(S, *shape) float64: bound on |port - expected| of the parameter (inf: do not compare)",
    "scale{k}": "(S, *shape) stats dtype (float32 for float16 parameters, else dtype): expected scale after each step (NaN before the tensor's first gradient)",
    "scale{k}_tol": "(S, *shape) float64: bound on the scale's error; 1 means ill-conditioned: count, do not compare",
    "cprop_m{k}": "(S, *shape) stats dtype: expected CProp m after each step (0 before the first gradient)",
    "cprop_m{k}_tol": "(S, *shape) float64: bound on m's error",
    "cprop_v{k}": "(S, *shape) stats dtype: expected CProp v after each step",
    "cprop_v{k}_tol": "(S, *shape) float64: bound on v's error",
    "step{k}": "(S,) int64: CProp's step count t of the tensor after each step",
}


def fixture_configs() -> list[tuple[str, PortConfig]]:
    """The fixed cases: names and configurations (float32, float64 and float16 each; bfloat16
    has no NPZ type, and its rules are float16's with another rounding)."""
    sgd = dict(lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False)
    adam = dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False)

    def cp(beta: float = 0.9, c: float = 1.0, eps: float = 1e-8, cdf: str = "bft", prefix: str = "cprop_") -> dict:
        return {f"{prefix}beta": beta, f"{prefix}c": c, f"{prefix}eps": eps, f"{prefix}cdf": cdf}

    base = [
        ("sgd_bft", PortConfig("CPropSGD", {**cp(), **sgd})),
        ("sgd_normal_momentum_wd", PortConfig("CPropSGD", {**cp(cdf="normal", c=3.0), **sgd, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01})),
        ("sgd_bfo_nesterov_beta0", PortConfig("CPropSGD", {**cp(beta=0.0, cdf="bfo"), **sgd, "momentum": 0.5, "nesterov": True})),
        ("sgd_logistic_eps0_c0", PortConfig("CPropSGD", {**cp(eps=0.0, cdf="logistic", c=0.0), **sgd})),
        ("adam_shared_moments", PortConfig("CPropAdam", {**cp(beta=0.999), **adam})),
        ("adam_amsgrad_wd_normal", PortConfig("CPropAdam", {**cp(cdf="normal", c=5.0), **adam, "weight_decay": 0.1, "amsgrad": True})),
        ("adam_beta_near_one_logistic", PortConfig("CPropAdam", {**cp(beta=1.0 - 1e-7, cdf="logistic"), **adam, "betas": (0.5, 0.9)})),
        ("wrapper_sgd_momentum_bfo", PortConfig("CProp", cp(cdf="bfo", prefix=""), base="SGD", base_hyperparams={**sgd, "momentum": 0.9})),
        ("wrapper_adam_normal", PortConfig("CProp", cp(cdf="normal", beta=0.99, prefix=""), base="Adam", base_hyperparams=adam)),
        ("wrapper_adamw_bft_large_c", PortConfig("CProp", cp(c=100.0, prefix=""), base="AdamW", base_hyperparams={**adam, "weight_decay": 0.1})),
    ]  # fmt: skip
    out = []
    # float16 cases come after the others, so the older cases keep their inputs (index seeds them)
    for dtypes in (("float32", "float64"), ("float16",)):
        for name, config in base:
            for dtype in dtypes:
                out.append(
                    (
                        f"{name}_{dtype}",
                        PortConfig(config.optimizer, config.hyperparams, dtype, config.base, config.base_hyperparams),
                    )
                )
    return out


def _inputs(index: int, dtype: str) -> tuple[list[np.ndarray], list[list[np.ndarray | None]]]:
    """Initial parameters and a stream mixing noise, a drifting mean, sign flips, exact zeros
    and missing gradients, one tensor of each shape in :data:`SHAPES`."""
    rng = np.random.default_rng(20191226 + index)
    params = [np.asarray(rng.standard_normal(shape), dtype) for shape in SHAPES]
    drift = np.linspace(-1.0, 1.0, STEPS)
    grads: list[list[np.ndarray | None]] = []
    for i in range(STEPS):
        row: list[np.ndarray | None] = []
        for k, shape in enumerate(SHAPES):
            if k == 1 and i % 5 == 3:
                row.append(None)  # this tensor gets no gradient on some steps
                continue
            g = drift[i] + 0.5 * rng.standard_normal(shape)
            if k == 2:
                g = g * np.where(np.arange(int(np.prod(shape))).reshape(shape) % 3 == 0, 0.0, (-1.0) ** i)
            row.append(np.asarray(g, dtype))
        grads.append(row)
    return params, grads


def record(config: PortConfig, params: list[np.ndarray], grads: list[list[np.ndarray | None]]) -> dict[str, np.ndarray]:
    """The reference's run of ``(config, params, grads)`` as the arrays of :data:`LAYOUT`."""
    dtype = config.np_dtype
    ref = ReferenceRun(config, params)
    bounds = RunBounds(config, [p.shape for p in params])
    steps = len(grads)
    arrays: dict[str, np.ndarray] = {}
    for k, p in enumerate(params):
        shape = (steps, *p.shape)
        arrays[f"param{k}_initial"] = np.array(p, dtype=dtype, copy=True)
        stats = compute_dtype(config.dtype)  # CProp's statistics: float32 for float16 parameters
        arrays[f"grad{k}"] = np.zeros(shape, dtype)
        arrays[f"grad{k}_present"] = np.zeros(steps, bool)
        for name in ("param", "cprop_m", "cprop_v"):
            arrays[f"{name}{k}"] = np.zeros(shape, dtype if name == "param" else stats)
            arrays[f"{name}{k}_tol"] = np.zeros(shape)
        arrays[f"scale{k}"] = np.full(shape, np.nan, stats)
        arrays[f"scale{k}_tol"] = np.ones(shape)
        arrays[f"step{k}"] = np.zeros(steps, np.int64)
    for i, gs in enumerate(grads):
        params_before, states_before = ref.params(), ref.states()
        ref.step(gs)
        params_after, states_after, scales = ref.params(), ref.states(), ref.scales()
        for k, g in enumerate(gs):
            if g is not None:
                arrays[f"grad{k}"][i] = g
                arrays[f"grad{k}_present"][i] = True
                bounds.advance(k, params_before[k], g, states_before[k], states_after[k], scales[k], params_after[k])
            tb = bounds.tensors[k]
            arrays[f"param{k}"][i] = params_after[k]
            arrays[f"param{k}_tol"][i] = tb.param
            if scales[k] is not None:
                arrays[f"scale{k}"][i] = scales[k]
                arrays[f"scale{k}_tol"][i] = tb.scale
                arrays[f"cprop_m{k}"][i] = states_after[k]["cprop_m"]
                arrays[f"cprop_v{k}"][i] = states_after[k]["cprop_v"]
                arrays[f"cprop_m{k}_tol"][i] = tb.cprop.m_bound
                arrays[f"cprop_v{k}_tol"][i] = tb.cprop.v_bound
                arrays[f"step{k}"][i] = states_after[k]["step"]
    return arrays


@dataclass
class GoldenCase:
    """One fixture: its manifest entry and its arrays."""

    name: str
    config: PortConfig
    arrays: dict[str, np.ndarray]
    tensors: int
    steps: int

    def inputs(self) -> tuple[list[np.ndarray], list[list[np.ndarray | None]]]:
        params = [self.arrays[f"param{k}_initial"] for k in range(self.tensors)]
        grads = [
            [self.arrays[f"grad{k}"][i] if self.arrays[f"grad{k}_present"][i] else None for k in range(self.tensors)]
            for i in range(self.steps)
        ]
        return params, grads


def write_fixtures(out: str | Path) -> list[str]:
    """Write the fixed cases and ``manifest.json`` into ``out`` (created); returns the file names."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    entries, files = [], []
    for index, (name, config) in enumerate(fixture_configs()):
        params, grads = _inputs(index, config.dtype)
        arrays = record(config, params, grads)
        file = f"{name}.npz"
        np.savez_compressed(folder / file, **arrays)
        files.append(file)
        entries.append(
            {
                "name": name,
                "file": file,
                "config": config.to_json(),
                "steps": len(grads),
                "tensors": [{"shape": list(p.shape), "dtype": config.dtype} for p in params],
            }
        )
    manifest = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "generator": f"cprop-ref {__version__}",
        "layout": LAYOUT,
        "cases": entries,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return [MANIFEST, *files]


def read_fixtures(folder: str | Path) -> list[GoldenCase]:
    """The cases of a fixture directory; ``ValueError`` naming the file on anything malformed."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise ValueError(f"{path}: no golden manifest here (write one with cprop-ref golden --out {folder})")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path}: not JSON ({err})") from None
    if manifest.get("format") != FORMAT_NAME or manifest.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: format {manifest.get('format')!r} version {manifest.get('version')!r}, "
            f"expected {FORMAT_NAME!r} version {FORMAT_VERSION}"
        )
    cases = []
    for entry in manifest["cases"]:
        file = folder / entry["file"]
        try:
            with np.load(file, allow_pickle=False) as npz:
                arrays = {key: npz[key] for key in npz.files}
        except (OSError, ValueError) as err:
            raise ValueError(f"{file}: unreadable golden case ({err})") from None
        cases.append(
            GoldenCase(
                entry["name"], PortConfig.from_json(entry["config"]), arrays, len(entry["tensors"]), entry["steps"]
            )
        )
    return cases


def recompute(case: GoldenCase) -> dict[str, np.ndarray]:
    """The reference's arrays for the stored inputs of ``case``."""
    params, grads = case.inputs()
    return record(case.config, params, grads)


def check_case(
    case: GoldenCase,
    port: Any,
    *,
    port_spec: str | None = None,
    coverage: Coverage | None = None,
    folder: str | Path | None = None,
) -> Coverage:
    """Run ``port`` over one fixture, comparing with the stored values and tolerances every
    step: CProp's moments and the scale where the port exposes them, then the parameters."""
    coverage = Coverage() if coverage is None else coverage
    params, grads = case.inputs()

    def make_snippet(step: int) -> str:
        port_line = f"port = load_port({port_spec!r})" if port_spec else "port = ...  # your port factory"
        return "\n".join(
            [
                "from cprop_ref.conformance import load_port",
                "from cprop_ref.conformance.golden import check_case, read_fixtures",
                port_line,
                f"case = next(c for c in read_fixtures({str(folder or 'FIXTURE_DIRECTORY')!r}) if c.name == {case.name!r})",
                "check_case(case, port)",
            ]
        )

    comparer = _Comparer(f"golden:{case.name}", case.config, coverage, make_snippet)
    run, _ = _start(comparer, port, case.config, params)
    a = case.arrays
    for i, gs in enumerate(grads):
        step = i + 1
        _port_call(comparer, step, "step(grads)", lambda gs=gs: run.step(gs))
        port_params, port_scales, port_state = _read_outs(comparer, step, run, [p.shape for p in params], case.config)
        for k in range(case.tensors):
            if port_state is None or a[f"step{k}"][i] == 0 or port_state[k] is None:
                continue
            m, v, t = port_state[k]
            if int(t) != int(a[f"step{k}"][i]):
                comparer.fail(
                    step, k, (), "step", float(t), float(a[f"step{k}"][i]), 0.0, "CProp's step count t differs"
                )
            comparer.compare(step, k, "cprop_m", m, a[f"cprop_m{k}"][i], a[f"cprop_m{k}_tol"][i])
            comparer.compare(step, k, "cprop_v", v, a[f"cprop_v{k}"][i], a[f"cprop_v{k}_tol"][i])
        for k in range(case.tensors):
            if port_scales is not None and a[f"step{k}"][i] > 0:
                comparer.compare(step, k, "scale", port_scales[k], a[f"scale{k}"][i], a[f"scale{k}_tol"][i])
        for k in range(case.tensors):
            comparer.compare(step, k, "param", port_params[k], a[f"param{k}"][i], a[f"param{k}_tol"][i])
        coverage.steps += 1
    coverage.examples += 1
    coverage.configurations.add(case.config.describe())
    return coverage


def check_fixtures(
    folder: str | Path, port: Any, *, port_spec: str | None = None, coverage: Coverage | None = None
) -> Coverage:
    """Every fixture of ``folder`` against ``port``; raises on the first mismatch."""
    coverage = Coverage() if coverage is None else coverage
    for case in read_fixtures(folder):
        check_case(case, port, port_spec=port_spec, coverage=coverage, folder=folder)
    return coverage
