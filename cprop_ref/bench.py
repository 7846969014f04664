"""``cprop-ref bench``: the speed of a step, measured side by side in one run.

Rows (every time is the median over repeated steps, after warm-up steps):

- ``2^N elements``: one float32 tensor; CProp-Adam (``bft``, ``normal``) and CProp-SGD on
  both backends, ``torch.optim.Adam(fused=True)`` and ``torch.optim.SGD`` (when torch is
  installed), the project's PyTorch port (when ``cprop_ref.torch`` imports), and the
  memory bounds: kernels that read and write exactly the bytes a step must touch. CProp-Adam
  with the default hyperparameters shares Adam's second moment but keeps its own first
  moment (``beta1 = 0.9 != cprop_beta``): parameter, gradient and three moments read, the
  parameter and the moments written (5 + 4 arrays); with both moments shared
  (``betas = (cprop_beta, cprop_beta)``), and for Adam and CProp-SGD, 4 + 3 arrays. Each
  CProp row is also shown against its own bound, and the default CProp-Adam ``bft`` without
  the finiteness check (``nonfinite="propagate"``, what torch does) shows that check's cost.
  Fused Adam is timed twice: as torch allocates (4 KiB pages: its CPU allocator asks for huge
  pages only under ``THP_MEM_ALLOC_ENABLE=1``) and on arrays allocated by NumPy, as the
  CProp rows and the bounds are (NumPy asks the kernel for transparent huge pages for arrays
  of 4 MiB and more, ``madvise``): the same bytes, the same pages, the fair comparison.
- ``JAX``: the JAX port's jitted ``cprop_adam`` update (``bft``, ``normal``, and ``bft`` without
  the last scale in the state, ``keep_scale=False``, also with both moments shared: the memory
  traffic of Adam) against a jitted ``optax.adam`` update (when the ``jax`` extra is installed),
  parameter and state buffers donated.
- ``many tensors``: the same total split into tensors of mixed sizes, against one tensor: as
  separate arrays, and as views of one buffer (:func:`cprop_ref.kernels.flat.flat_parameters`).
- ``2 elements``: time per ``step()`` call (the Rosenbrock case), against ``torch.optim.Adam``.
- ``compile``: import and first step in a new process, with the Numba cache warm and cold.
- ``torch port variants``: ``cprop_ref.torch.CPropAdam`` (``bft``) with ``fused=True``
  against ``torch.optim.Adam(fused=True)`` and with ``foreach=True`` against
  ``torch.optim.Adam(foreach=True)`` (targets: at most 2x and 1.5x), one tensor and the
  mixed-size tensors of the many-tensor row, each pair interleaved; and the fused step's
  first call in a new process (``torch.compile``) with an empty and a warm inductor cache
  (``TORCHINDUCTOR_CACHE_DIR``). ``--skip-compile`` leaves out the fused rows (they compile).

The table is printed and written as JSON (``--json``). ``--only GROUP`` (repeatable) runs only
the named groups: ``single``, ``jax``, ``many``, ``tiny``, ``torch-variants``, ``compile``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

#: The memory bounds: rows named by the arrays read and written per element.
BOUND = "memory bound (4 reads + 3 writes)"
BOUND_PRIVATE_M = "memory bound (5 reads + 4 writes)"
FUSED_ADAM = "torch.optim.Adam(fused=True)"
FUSED_ADAM_NUMPY_MEMORY = "torch.optim.Adam(fused=True), NumPy's memory"


#: The groups of rows, as ``--only`` names them.
GROUPS = ("single", "jax", "many", "tiny", "torch-variants", "compile")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="time a step: Numba and NumPy backends, torch, the memory bound")
    parser.add_argument("--log2-size", type=int, default=24, help="elements of the large tensor, as a power of 2")
    parser.add_argument("--tensors", type=int, default=200, help="tensors in the many-tensor row (default 200)")
    parser.add_argument("--repeats", type=int, default=15, help="timed steps per fast row (default 15)")
    parser.add_argument("--numpy-repeats", type=int, default=3, help="timed steps per NumPy-backend row (default 3)")
    parser.add_argument("--tiny-repeats", type=int, default=2000, help="timed steps of the 2-element rows")
    parser.add_argument(
        "--skip-compile", action="store_true", help="skip the new-process compile rows and the torch.compile'd rows"
    )
    parser.add_argument(
        "--json", default="cprop-bench.json", help="where to write the table (default cprop-bench.json)"
    )
    parser.add_argument(
        "--only",
        choices=GROUPS,
        action="append",
        help="run only this group of rows (repeatable; default: all): " + ", ".join(GROUPS),
    )
    parser.set_defaults(func=run_bench)


def median_time(step: Callable[[], Any], repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``step()`` in seconds over ``repeats`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def median_time_batched(step: Callable[[], Any], repeats: int, batch: int = 100) -> float:
    """Median time per call of ``step()`` over batches of ``batch`` calls (for microsecond steps)."""
    for _ in range(batch):
        step()
    times = []
    for _ in range(max(1, repeats // batch)):
        start = time.perf_counter()
        for _ in range(batch):
            step()
        times.append((time.perf_counter() - start) / batch)
    return statistics.median(times)


def _memory_bound_kernels() -> dict[str, Callable[..., None]]:
    from numba import njit, prange

    @njit(parallel=True, cache=True)
    def touch3(p, g, m, v):  # pragma: no cover - timed, not tested for its values
        for i in prange(p.size):
            gi = g[i]
            p[i] += gi
            m[i] += gi
            v[i] += gi

    @njit(parallel=True, cache=True)
    def touch4(p, g, m, v, c):  # pragma: no cover - timed, not tested for its values
        for i in prange(p.size):
            gi = g[i]
            p[i] += gi
            m[i] += gi
            v[i] += gi
            c[i] += gi

    return {BOUND: touch3, BOUND_PRIVATE_M: touch4}


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        return None
    return torch


def _torch_port() -> Any:
    try:
        import importlib

        return importlib.import_module("cprop_ref.torch")
    except Exception:  # noqa: BLE001 - any failure to import means "no port to time"
        return None


def transparent_huge_pages() -> str | None:
    """The kernel's transparent-huge-page mode (``always``, ``madvise``, ``never``), or None
    where the system does not say (not Linux)."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as handle:
            text = handle.read()
    except OSError:
        return None
    chosen = [word[1:-1] for word in text.split() if word.startswith("[")]
    return chosen[0] if chosen else None


def torch_pages(mode: str | None) -> str:
    """The pages torch's CPU allocator gets for a large tensor under the huge-page ``mode``."""
    if mode == "always" or (mode == "madvise" and os.environ.get("THP_MEM_ALLOC_ENABLE") == "1"):
        return "huge pages"
    return "4 KiB pages" if mode is not None else "pages unknown"


def fused_adam_on_numpy_memory(torch: Any, grad: np.ndarray) -> Callable[[], Any]:
    """``torch.optim.Adam(fused=True)`` whose weight and moments are NumPy arrays (shared with
    torch by ``torch.from_numpy``), so that it runs on the memory pages the CProp rows run on.
    Its state is filled in before the first step as Adam's own first step would create it
    (``step`` a float32 scalar tensor, both moments zero): the same numbers as the default row."""
    n = grad.size
    weight = torch.from_numpy(np.zeros(n, np.float32)).requires_grad_()
    weight.grad = torch.from_numpy(grad)
    optimizer = torch.optim.Adam([weight], lr=1e-3, fused=True)
    optimizer.state[weight] = {
        "step": torch.tensor(0.0, dtype=torch.float32),
        "exp_avg": torch.from_numpy(np.zeros(n, np.float32)),
        "exp_avg_sq": torch.from_numpy(np.zeros(n, np.float32)),
    }
    return optimizer.step


def mixed_sizes(total: int, count: int, seed: int = 0) -> list[int]:
    """``count`` sizes spread log-uniformly over three orders of magnitude, summing to ``total``."""
    rng = np.random.default_rng(seed)
    weights = 10.0 ** rng.uniform(0.0, 3.0, size=count)
    sizes = np.maximum(1, np.floor(weights / weights.sum() * total)).astype(np.int64)
    sizes[np.argmax(sizes)] += total - int(sizes.sum())
    return [int(n) for n in sizes]


class Table:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, group: str, name: str, seconds: float | None, against: str | None = None, note: str = "") -> None:
        ratio = None
        if seconds is not None and against is not None:
            base = self.seconds(group, against)
            ratio = seconds / base if base else None
        self.rows.append(
            {"group": group, "row": name, "median_s": seconds, "ratio": ratio, "against": against, "note": note}
        )
        shown = "-" if seconds is None else _format_time(seconds)
        ratio_text = "" if ratio is None else f"{ratio:6.2f}x {against}"
        print(f"  {name:<44} {shown:>11}  {ratio_text}{('  ' + note) if note else ''}", flush=True)

    def seconds(self, group: str, name: str) -> float | None:
        for row in self.rows:
            if row["group"] == group and row["row"] == name:
                return row["median_s"]
        return None


def _format_time(seconds: float) -> str:
    if seconds >= 1.0:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.2f} us"


def machine() -> dict[str, Any]:
    import numba

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "numba_threads": numba.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "transparent_huge_pages": transparent_huge_pages(),
    }
    torch = _torch()
    info["torch"] = None if torch is None else torch.__version__
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def interleaved_medians(steps: dict[str, Callable[[], Any]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median time of each step, the steps taken in turn (A B C A B C ...) so that a change
    in the machine's load during the run affects every row alike and the ratios stay fair."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def interleaved_medians_batched(
    steps: dict[str, Callable[[], Any]], repeats: int, batch: int = 100
) -> dict[str, float]:
    """As :func:`interleaved_medians`, per call, over batches of ``batch`` calls (microsecond steps)."""
    batched = {name: (lambda step=step: [step() for _ in range(batch)]) for name, step in steps.items()}
    return {name: t / batch for name, t in interleaved_medians(batched, max(1, repeats // batch), 1).items()}


def bench_single_tensor(table: Table, n: int, args: argparse.Namespace) -> None:
    from .optim import CPropAdam, CPropSGD

    group = f"2^{args.log2_size} elements, float32"
    print(f"{group}:")
    rng = np.random.default_rng(0)
    grad = rng.standard_normal(n).astype(np.float32)
    touch = _memory_bound_kernels()
    arrays = [np.zeros(n, np.float32) for _ in range(4)]
    steps: dict[str, Callable[[], Any]] = {
        BOUND: lambda a=arrays: touch[BOUND](a[0], grad, a[1], a[2]),
        BOUND_PRIVATE_M: lambda a=arrays: touch[BOUND_PRIVATE_M](a[0], grad, a[1], a[2], a[3]),
    }
    torch = _torch()
    if torch is not None:
        torch.set_num_threads(_threads())
        weights = [torch.zeros(n, requires_grad=True) for _ in range(2)]
        for weight in weights:
            weight.grad = torch.from_numpy(grad)
        steps[FUSED_ADAM] = torch.optim.Adam([weights[0]], lr=1e-3, fused=True).step
        steps[FUSED_ADAM_NUMPY_MEMORY] = fused_adam_on_numpy_memory(torch, grad)
        steps["torch.optim.SGD"] = torch.optim.SGD([weights[1]], lr=1e-3).step
        fused_adam, plain_sgd = FUSED_ADAM, "torch.optim.SGD"
    else:
        fused_adam, plain_sgd = BOUND_PRIVATE_M, BOUND
    # name: (make(parameter, backend), compared with, own memory bound, NumPy row too)
    makers = {
        "CProp-Adam bft": (lambda x, b: CPropAdam([x], cprop_cdf="bft", backend=b), fused_adam, BOUND_PRIVATE_M, True),
        "CProp-Adam normal": (
            lambda x, b: CPropAdam([x], cprop_cdf="normal", backend=b),
            fused_adam,
            BOUND_PRIVATE_M,
            True,
        ),
        "CProp-Adam bft, no finiteness check": (
            lambda x, b: CPropAdam([x], cprop_cdf="bft", nonfinite="propagate", backend=b),
            fused_adam,
            BOUND_PRIVATE_M,
            False,
        ),
        "CProp-Adam bft, both moments shared": (
            lambda x, b: CPropAdam([x], betas=(0.999, 0.999), cprop_cdf="bft", backend=b),
            fused_adam if torch is not None else BOUND,
            BOUND,
            False,
        ),
        "CProp-SGD bft": (lambda x, b: CPropSGD([x], lr=1e-3, backend=b), plain_sgd, BOUND, True),
    }
    for name, (make, *_) in makers.items():
        opt = make(np.zeros(n, np.float32), "numba")
        steps[f"{name} [numba]"] = lambda opt=opt: opt.step([grad])
    medians = interleaved_medians(steps, args.repeats)
    for bound, arrays_moved in ((BOUND, 7), (BOUND_PRIVATE_M, 9)):
        gbytes = arrays_moved * 4 * n / medians[bound] / 1e9
        table.add(group, bound, medians[bound], note=f"{gbytes:.1f} GB/s")
    if torch is not None:
        mode = transparent_huge_pages()
        table.add(group, fused_adam, medians[fused_adam], BOUND, note=f"torch's allocator: {torch_pages(mode)}")
        table.add(
            group,
            FUSED_ADAM_NUMPY_MEMORY,
            medians[FUSED_ADAM_NUMPY_MEMORY],
            BOUND,
            note=f"NumPy's arrays, as the CProp rows (transparent huge pages: {mode or 'unknown'})",
        )
        table.add(group, plain_sgd, medians[plain_sgd], BOUND)
    else:
        table.add(group, FUSED_ADAM, None, note="torch not installed: skipped")
        table.add(group, FUSED_ADAM_NUMPY_MEMORY, None, note="torch not installed: skipped")
        table.add(group, "torch.optim.SGD", None, note="torch not installed: skipped")
    for name, (_, against, bound, _) in makers.items():
        table.add(group, f"{name} [numba]", medians[f"{name} [numba]"], against)
        table.add(group, f"{name} [numba] vs bound", medians[f"{name} [numba]"], bound)
        if torch is not None and against == fused_adam:
            table.add(group, f"{name} [numba] vs the same pages", medians[f"{name} [numba]"], FUSED_ADAM_NUMPY_MEMORY)
    steps.clear()
    # The project's PyTorch port takes about a second per step at this size: measured after, on
    # its own. Interleaved, it slowed every row after it, and unevenly (the bound and fused Adam
    # by 5 ms, CProp-Adam by 4 ms: measured).
    port = _torch_port()
    port_seconds, port_note = None, "no PyTorch port importable: skipped"
    if torch is not None and port is not None and hasattr(port, "CPropAdam"):
        weight = torch.zeros(n, requires_grad=True)
        weight.grad = torch.from_numpy(grad)
        try:
            port_seconds = median_time(port.CPropAdam([weight], lr=1e-3).step, args.numpy_repeats, 1)
            port_note = "measured after the interleaved rows"
        except Exception as err:  # noqa: BLE001 - the port is optional and may be incomplete
            port_note = f"failed: {type(err).__name__}: {err}"
    table.add(group, "cprop_ref.torch CPropAdam bft (port)", port_seconds, fused_adam, note=port_note)
    # The NumPy backend takes seconds per step at this size: measured after, on its own.
    for name, (make, _, _, numpy_row) in makers.items():
        if not numpy_row:
            continue
        opt = make(np.zeros(n, np.float32), "numpy")
        seconds = median_time(lambda opt=opt: opt.step([grad]), args.numpy_repeats, 1)
        table.add(group, f"{name} [numpy]", seconds, f"{name} [numba]", note="measured after the interleaved rows")


def _jitted_optax_step(tx: Any, grad: Any) -> Callable[[], Any]:
    """One jitted ``update`` + ``apply_updates`` of ``tx`` on a parameter like ``grad``, the
    parameter and state buffers donated (updated in place, as an optimizer's step is)."""
    import jax
    import optax

    def step(params: Any, state: Any) -> Any:
        updates, state = tx.update(grad, state, params)
        return optax.apply_updates(params, updates), state

    compiled = jax.jit(step, donate_argnums=(0, 1))
    params = jax.numpy.zeros_like(grad)
    held = [params, tx.init(params)]

    def run() -> None:
        held[0], held[1] = compiled(held[0], held[1])
        jax.block_until_ready(held[0])

    return run


def bench_jax(table: Table, n: int, args: argparse.Namespace) -> None:
    """The JAX port's jitted ``cprop_adam`` update against a jitted ``optax.adam`` update, side by
    side (interleaved), one float32 tensor of ``n`` elements (target: at most 1.5x)."""
    group = f"2^{args.log2_size} elements, float32, JAX (jitted optax update + apply_updates)"
    print(f"{group}:")
    try:
        import jax
        import optax

        from . import jax as cprop_jax
    except ImportError:
        table.add(group, "optax.adam", None, note="jax/optax not installed (the 'jax' extra): skipped")
        return
    grad = jax.numpy.asarray(np.random.default_rng(0).standard_normal(n).astype(np.float32))
    transformations = {
        "optax.adam": optax.adam(1e-3),
        "cprop_ref.jax.cprop_adam bft": cprop_jax.cprop_adam(1e-3),
        "cprop_ref.jax.cprop_adam normal": cprop_jax.cprop_adam(1e-3, cprop_cdf="normal"),
        "cprop_ref.jax.cprop_adam bft, keep_scale=False": cprop_jax.cprop_adam(1e-3, keep_scale=False),
        # optax.adam's memory traffic (both moments shared, no scale kept): the arithmetic's cost
        "cprop_ref.jax.cprop_adam bft, betas=(0.999, 0.999), keep_scale=False": cprop_jax.cprop_adam(
            1e-3, betas=(0.999, 0.999), keep_scale=False
        ),
        "cprop_ref.jax.adam (torch semantics)": cprop_jax.adam(1e-3),
    }
    medians = interleaved_medians({k: _jitted_optax_step(tx, grad) for k, tx in transformations.items()}, args.repeats)
    note = f"JAX {jax.__version__}, optax {optax.__version__}, {jax.default_backend()}"
    table.add(group, "optax.adam", medians["optax.adam"], note=note)
    for name in list(transformations)[1:]:
        table.add(group, name, medians[name], "optax.adam", note="target <= 1.5x" if "cprop_adam" in name else "")


def bench_many_tensors(table: Table, n: int, args: argparse.Namespace) -> None:
    from .kernels.flat import flat_parameters
    from .optim import CPropAdam

    group = f"{args.tensors} tensors vs 1, same total 2^{args.log2_size}"
    print(f"{group}:")
    rng = np.random.default_rng(1)
    sizes = mixed_sizes(n, args.tensors)
    single_grad = rng.standard_normal(n).astype(np.float32)
    single = CPropAdam([np.zeros(n, np.float32)])
    params = [np.zeros(size, np.float32) for size in sizes]
    grads = [rng.standard_normal(size).astype(np.float32) for size in sizes]
    many = CPropAdam(params)
    # The same tensors as views of one buffer each for parameters and gradients (flat_parameters).
    _, flat_params = flat_parameters([(size,) for size in sizes])
    _, flat_grads = flat_parameters([(size,) for size in sizes])
    for view, grad in zip(flat_grads, grads):
        view[...] = grad
    flat = CPropAdam(flat_params)
    one_name, many_name = "CProp-Adam bft, 1 tensor [numba]", f"CProp-Adam bft, {len(sizes)} tensors [numba]"
    flat_name = f"CProp-Adam bft, {len(sizes)} views of one buffer [numba]"
    medians = interleaved_medians(
        {
            one_name: lambda: single.step([single_grad]),
            many_name: lambda: many.step(grads),
            flat_name: lambda: flat.step(flat_grads),
        },
        args.repeats,
    )
    table.add(group, one_name, medians[one_name])
    table.add(group, many_name, medians[many_name], one_name, note=f"sizes {min(sizes)}..{max(sizes)}")
    table.add(group, flat_name, medians[flat_name], one_name, note="kernels.flat.flat_parameters")


def bench_tiny(table: Table, args: argparse.Namespace) -> None:
    from .optim import CPropAdam

    group = "2 elements (Rosenbrock), time per step()"
    print(f"{group}:")
    torch = _torch()
    grad = np.array([0.5, -1.0], np.float32)
    steps: dict[str, Callable[[], Any]] = {}
    if torch is not None:
        torch.set_num_threads(_threads())
        weight = torch.zeros(2, requires_grad=True)
        weight.grad = torch.ones(2)
        steps["torch.optim.Adam"] = torch.optim.Adam([weight], lr=1e-3).step
    for backend in ("numba", "numpy"):
        opt = CPropAdam([np.zeros(2, np.float32)], backend=backend)
        steps[f"CProp-Adam bft, 2 elements [{backend}]"] = lambda opt=opt: opt.step([grad])
    medians = interleaved_medians_batched(steps, args.tiny_repeats)
    reference = "torch.optim.Adam" if torch is not None else None
    if reference is None:
        table.add(group, "torch.optim.Adam", None, note="torch not installed: skipped")
    else:
        table.add(group, reference, medians[reference])
    for backend in ("numba", "numpy"):
        name = f"CProp-Adam bft, 2 elements [{backend}]"
        table.add(group, name, medians[name], reference)


def _torch_pair(torch: Any, make: Callable[[list[Any]], Any], grads: list[np.ndarray]) -> Callable[[], Any]:
    """``make(params).step`` on float32 zeros shaped like ``grads``, their gradients set."""
    params = [torch.zeros(g.size, requires_grad=True) for g in grads]
    for p, g in zip(params, grads):
        p.grad = torch.from_numpy(g)
    return make(params).step


def bench_torch_variants(table: Table, n: int, args: argparse.Namespace) -> None:
    """The torch port's ``fused`` and ``foreach`` CProp-Adam against torch's own Adam with the
    same option, one float32 tensor of ``n`` elements and ``args.tensors`` of mixed sizes."""
    torch, port = _torch(), _torch_port()
    if torch is None or port is None or not hasattr(port, "CPropAdam"):
        print("torch port variants: torch or cprop_ref.torch not importable: skipped")
        return
    torch.set_num_threads(_threads())
    rng = np.random.default_rng(2)
    shapes = {"1 tensor": [n], f"{args.tensors} tensors": mixed_sizes(n, args.tensors)}
    for label, sizes in shapes.items():
        group = f"torch port variants, 2^{args.log2_size} float32 elements in {label}"
        print(f"{group}:")
        grads = [rng.standard_normal(size).astype(np.float32) for size in sizes]
        for option, target, repeats in (("fused", 2.0, args.repeats), ("foreach", 1.5, max(3, args.repeats // 3))):
            if option == "fused" and args.skip_compile:
                table.add(group, "CPropAdam bft (fused=True)", None, note="--skip-compile: torch.compile skipped")
                continue
            adam, cprop = f"torch.optim.Adam({option}=True)", f"CPropAdam bft ({option}=True)"
            steps = {
                adam: _torch_pair(torch, lambda ps, o=option: torch.optim.Adam(ps, lr=1e-3, **{o: True}), grads),
                cprop: _torch_pair(torch, lambda ps, o=option: port.CPropAdam(ps, lr=1e-3, **{o: True}), grads),
            }
            medians = interleaved_medians(steps, repeats)
            table.add(group, adam, medians[adam])
            table.add(group, cprop, medians[cprop], adam, note=f"target <= {target}x")


_FIRST_FUSED_STEP = """
import time
import torch
from cprop_ref.torch import CPropAdam
x = torch.zeros(1 << 16)
x.grad = torch.ones(1 << 16)
opt = CPropAdam([x], fused=True)
start = time.perf_counter()
opt.step()
print(time.perf_counter() - start)
"""


def bench_torch_compile(table: Table) -> None:
    """The fused CProp-Adam's first step in a new process: ``torch.compile`` tracing and
    building its kernel (empty inductor cache) or loading it (warm cache)."""
    if _torch() is None or _torch_port() is None:
        return
    group = "torch port fused=True: first step in a new process (torch.compile)"
    print(f"{group}:")
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        times = []
        for _ in range(2):
            out = subprocess.run(
                [sys.executable, "-c", _FIRST_FUSED_STEP], env=env, capture_output=True, text=True, check=True
            )
            times.append(float(out.stdout.split()[-1]))
    table.add(group, "first step, warm inductor cache", times[1])
    table.add(group, "first step, empty inductor cache (compiles)", times[0], "first step, warm inductor cache")


_FIRST_STEP = """
import time
start = time.perf_counter()
import numpy as np
from cprop_ref import CPropAdam
imported = time.perf_counter()
for n in (2, 1 << 16):
    x = np.zeros(n, np.float32)
    CPropAdam([x]).step([np.ones(n, np.float32)])
print(imported - start, time.perf_counter() - imported)
"""


def _first_step_in_new_process(cache_dir: str | None) -> tuple[float, float]:
    env = dict(os.environ)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    out = subprocess.run([sys.executable, "-c", _FIRST_STEP], env=env, capture_output=True, text=True, check=True)
    imported, first = (float(x) for x in out.stdout.split())
    return imported, first


def bench_compile(table: Table) -> None:
    group = "compile: new process, import + first step (serial and parallel kernels)"
    print(f"{group}:")
    _first_step_in_new_process(None)  # make sure the cache is warm
    warm = [_first_step_in_new_process(None) for _ in range(3)]
    table.add(group, "import cprop_ref", statistics.median(w[0] for w in warm))
    table.add(group, "first step, warm cache", statistics.median(w[1] for w in warm))
    with tempfile.TemporaryDirectory() as cold_dir:
        cold = _first_step_in_new_process(cold_dir)
    table.add(group, "first step, cold cache (compiles)", cold[1], "first step, warm cache")


def _threads() -> int:
    import numba

    return numba.get_num_threads()


def run_bench(args: argparse.Namespace) -> int:
    if not 1 <= args.log2_size <= 30:
        raise SystemExit(f"cprop-ref bench: invalid --log2-size={args.log2_size}: must be in 1..30")
    if args.tensors < 1 or args.repeats < 1 or args.numpy_repeats < 1 or args.tiny_repeats < 1:
        raise SystemExit("cprop-ref bench: --tensors and the --*repeats options must be >= 1")
    n = 1 << args.log2_size
    info = machine()
    print(f"cprop-ref bench on {info['processor']}, {info['cpu_count']} CPUs, {info['numba_threads']} Numba threads")
    table = Table()
    only = set(getattr(args, "only", None) or GROUPS)
    if "single" in only:
        bench_single_tensor(table, n, args)
    if "jax" in only:
        bench_jax(table, n, args)
    if "many" in only:
        bench_many_tensors(table, n, args)
    if "tiny" in only:
        bench_tiny(table, args)
    if "torch-variants" in only:
        bench_torch_variants(table, n, args)
    if "compile" in only and not args.skip_compile:
        bench_compile(table)
        bench_torch_compile(table)
    with open(args.json, "w") as handle:
        json.dump({"machine": info, "size": n, "rows": table.rows}, handle, indent=1)
    print(f"wrote {args.json}")
    return 0
