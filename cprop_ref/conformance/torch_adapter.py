"""The port adapter for PyTorch optimizers: cprop-ref's own torch port by default, or any
``torch.optim.Optimizer`` classes with the authors' constructor signatures.

``TorchPort(classes={"CPropSGD": ..., "CPropAdam": ..., "CProp": ...}, device="cuda")``
adapts another package; scales and CProp statistics are read through the optimizer's
``scales()`` / ``cprop_statistics()`` methods when it has them, and states are injected
through its ``state`` dict with the protocol's names (torch's own SGD / Adam names for a
wrapped base optimizer).

The parameters are what a model hands an optimizer: leaf tensors that require gradients
(``nn.Parameter``'s ``requires_grad=True``), so a step that records an autograd graph or
changes a leaf in place outside ``torch.no_grad()`` fails as it would for a user (after each
step the adapter checks that every parameter is still such a leaf). The protocol's parameter
groups (``groups(configs, params)``, :mod:`.usage`) are torch's ``param_groups``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from .config import PortConfig
from .protocol import Unsupported, copy_keeping_layout

try:
    import torch
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "cprop_ref.conformance.torch_adapter needs PyTorch, the optional 'torch' extra: pip install 'cprop-ref[torch]'"
    ) from err

_TORCH_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}


def _cprop_ref_classes() -> dict[str, type]:
    from ..torch import CProp, CPropAdam, CPropSGD

    return {"CPropSGD": CPropSGD, "CPropAdam": CPropAdam, "CProp": CProp}


def _to_numpy(x: Any) -> np.ndarray:
    """A copy on the host; bfloat16 (which NumPy lacks) as float32, exactly."""
    x = x.detach().to("cpu")
    if x.dtype == torch.bfloat16:
        x = x.to(torch.float32)
    return x.numpy().copy()


def _from_numpy(x: np.ndarray, dtype: Any, device: Any) -> Any:
    """A tensor of ``dtype`` on ``device`` from a protocol array (bfloat16 from its float32
    carrier, exactly), in the array's own memory layout (strides; the conversion to another
    dtype or device keeps dense layouts such as transposed and channels-last)."""
    return torch.from_numpy(copy_keeping_layout([np.asarray(x)])[0]).to(device=device, dtype=dtype)


def _tensors_keeping_layout(params: Sequence[np.ndarray], dtype: Any, device: Any) -> list[Any]:
    """The parameters as tensors with the arrays' strides, views of one buffer staying views of
    one buffer (on the CPU in the arrays' own dtype; elsewhere each is converted alone)."""
    copies = copy_keeping_layout([np.asarray(p) for p in params])
    tensors = [torch.from_numpy(c) for c in copies]
    if all(t.dtype == dtype for t in tensors) and torch.device(device).type == "cpu":
        return tensors
    return [t.to(device=device, dtype=dtype) for t in tensors]


def _trainable(tensors: list[Any]) -> list[Any]:
    """The tensors as a model's parameters: leaves that require gradients (as ``nn.Parameter``)."""
    return [t.requires_grad_(True) if t.is_floating_point() else t for t in tensors]


class TorchRun:
    """A torch optimizer behind the port protocol."""

    def __init__(self, optimizer: Any, params: list[Any], config: PortConfig, device: str) -> None:
        self.optimizer = optimizer
        self.tensors = params
        self.config = config
        self.device = device

    def step(self, grads: Sequence[np.ndarray | None]) -> None:
        for p, g in zip(self.tensors, grads):
            p.grad = None if g is None else _from_numpy(g, p.dtype, p.device)
        self.optimizer.step()
        for k, p in enumerate(self.tensors):
            if not (p.is_leaf and p.requires_grad):
                raise RuntimeError(
                    f"after the step, parameter {k} is no longer a leaf tensor that requires grad "
                    f"(is_leaf={p.is_leaf}, requires_grad={p.requires_grad}): the step recorded an autograd "
                    "graph or replaced the parameter (a step runs under torch.no_grad())"
                )

    def params(self) -> list[np.ndarray]:
        return [_to_numpy(p) for p in self.tensors]

    def add_group(self, config: PortConfig, params: Sequence[np.ndarray], device: str | None = None) -> None:
        """``add_param_group`` of ``params`` with ``config``'s hyperparameters (the wrapper: its
        base optimizer's) on the built optimizer, on ``device`` (default the run's); the new
        tensors join the read-outs."""
        dtype = _TORCH_DTYPES[self.config.dtype]
        tensors = _trainable(_tensors_keeping_layout(params, dtype, device or self.device))
        hyperparams = config.base_hyperparams if config.optimizer == "CProp" else config.hyperparams
        self.optimizer.add_param_group({"params": tensors, **hyperparams})
        self.tensors.extend(tensors)

    def save(self) -> bytes:
        """The optimizer's ``state_dict()`` serialised with ``torch.save`` (what a user checkpoints)."""
        buffer = io.BytesIO()
        torch.save(self.optimizer.state_dict(), buffer)
        return buffer.getvalue()

    def restore(self, data: bytes) -> None:
        """``load_state_dict`` of what :meth:`save` wrote, into this freshly built optimizer."""
        self.optimizer.load_state_dict(torch.load(io.BytesIO(data), weights_only=True))

    def scales(self) -> list[np.ndarray | None] | None:
        """The optimizer's ``scales()``; ``None`` (not compared) if it has no such method."""
        if not hasattr(self.optimizer, "scales"):
            return None
        return [None if s is None else _to_numpy(s) for s in self.optimizer.scales()]

    def cprop_state(self) -> list[tuple[np.ndarray, np.ndarray, int] | None] | None:
        """The optimizer's ``cprop_statistics()``; ``None`` (not compared) if it has none."""
        if not hasattr(self.optimizer, "cprop_statistics"):
            return None
        return [
            None if st is None else (_to_numpy(st[0]), _to_numpy(st[1]), int(st[2]))
            for st in self.optimizer.cprop_statistics()
        ]

    def load_state(self, states: Sequence[dict[str, Any]]) -> None:
        """Write the protocol's state entries into the optimizer's ``state`` (see module docstring)."""
        opt, cfg = self.optimizer, self.config

        def tensor(x: np.ndarray, p: Any) -> Any:
            return torch.from_numpy(np.array(x, copy=True)).to(device=p.device)

        def base_tensor(x: Any, p: Any) -> Any:
            # torch's own optimizers keep their state in the parameter's dtype (as its
            # load_state_dict casts it); the harness's values are exact in it
            return x.to(p.dtype) if x.is_floating_point() else x

        for p, st in zip(self.tensors, states):
            arrays = {k: tensor(v, p) for k, v in st.items() if k != "step" and v is not None}
            if cfg.optimizer == "CProp":
                opt.state[p] = {"step": int(st["step"]), "cprop_m": arrays["cprop_m"], "cprop_v": arrays["cprop_v"]}
                if cfg.base == "SGD":
                    keys: tuple[str, ...] = ("momentum_buffer",)
                else:
                    keys = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
                base = {k: base_tensor(arrays[k], p) for k in keys if k in arrays}
                if cfg.base != "SGD":
                    base["step"] = torch.tensor(float(st["step"]), dtype=torch.float32)
                opt.base_optimizer.state[p] = base
                continue
            entry: dict[str, Any] = {"step": int(st["step"]), **arrays}
            if cfg.optimizer == "CPropAdam" and hasattr(opt, "sharing_allowed"):
                share_m, share_v = opt.sharing_allowed(opt.param_groups[0])
                if share_m and np.array_equal(st["cprop_m"], st["exp_avg"]):
                    del entry["cprop_m"]
                if share_v and np.array_equal(st["cprop_v"], st["exp_avg_sq"]):
                    del entry["cprop_v"]
            opt.state[p] = entry


class TorchPort:
    """Port factory over torch optimizers (``cprop_ref.conformance:torch_port`` is the default one)."""

    def __init__(self, classes: dict[str, type] | None = None, device: str = "cpu") -> None:
        self.classes = classes
        self.device = device

    def __call__(self, config: PortConfig, params: Sequence[np.ndarray]) -> TorchRun:
        return self.groups([config], [params])

    def groups(self, configs: Sequence[PortConfig], params: Sequence[Sequence[np.ndarray]]) -> TorchRun:
        """One optimizer over parameter groups: ``configs[g]``'s hyperparameters for the tensors
        ``params[g]`` (torch's ``param_groups``; for ``CProp``, the base optimizer's groups). The
        optimizer is built over the first group and each later one is added with
        ``add_param_group``, as a user adds parameters to a built optimizer (the constructor's
        own list of groups goes through the same method)."""
        return self.build(configs, params)

    def build(
        self,
        configs: Sequence[PortConfig],
        params: Sequence[Sequence[np.ndarray]],
        device: str | None = None,
        **options: Any,
    ) -> TorchRun:
        """:meth:`groups` on ``device`` (default the port's), with ``options`` (``foreach=True``, ...)
        passed to cprop-ref's class (for ``CProp``, to the wrapper)."""
        classes = self.classes or _cprop_ref_classes()
        device = self.device if device is None else device
        config = configs[0]
        if config.dtype not in _TORCH_DTYPES:
            raise Unsupported(f"dtype {config.dtype}")
        if config.optimizer not in classes:
            raise Unsupported(f"no class for {config.optimizer}")
        dtype = _TORCH_DTYPES[config.dtype]
        grouped = [_trainable(_tensors_keeping_layout(ps, dtype, device)) for ps in params]
        if config.optimizer == "CProp":
            base_cls = getattr(torch.optim, config.base or "")
            groups = [{"params": ts, **c.base_hyperparams} for ts, c in zip(grouped, configs)]
            # one code path, the documented per-tensor one
            base = base_cls(groups[:1], **{"foreach": False, **config.base_hyperparams})
            optimizer = classes["CProp"](base, **config.hyperparams, **options)
        else:
            groups = [{"params": ts, **c.hyperparams} for ts, c in zip(grouped, configs)]
            optimizer = classes[config.optimizer](groups[:1], **config.hyperparams, **options)
        for group in groups[1:]:
            optimizer.add_param_group(group)
        return TorchRun(optimizer, [t for ts in grouped for t in ts], config, device)


def option_refusals_of(port: TorchPort) -> Any:
    """The protocol's optional ``option_refusals`` hook (:mod:`.usage`) for cprop-ref's torch
    optimizers built by ``port``: the ``foreach`` / ``fused`` options torch.optim refuses."""

    def option_refusals(config: PortConfig, params: Sequence[np.ndarray]) -> list[tuple[str, Any]]:
        def build(device: str | None = None, **options: Any) -> Any:
            return lambda: port.build([config], [params], device, **options)

        def add_meta_group() -> None:
            try:
                run = port.build([config], [params], None, foreach=None, fused=True)
            except RuntimeError as err:  # no C++ compiler here: fused=True cannot be built at all
                raise Unsupported(f"fused=True cannot be built on this machine: {err}") from None
            run.add_group(config, [np.asarray(p) for p in params], device="meta")

        return [
            ("foreach=True, fused=True", build(foreach=True, fused=True)),
            ("foreach='yes'", build(foreach="yes")),
            ("fused=1", build(fused=1)),
            # a device that torch.compile has no backend for: refused at construction
            ("fused=True, device=meta", build("meta", foreach=None, fused=True)),
            # the same parameters in a group added to a built fused=True optimizer
            ("fused=True, an added group on device=meta", add_meta_group),
        ]

    return option_refusals


def torch_port(config: PortConfig, params: Sequence[np.ndarray]) -> TorchRun:
    """cprop-ref's torch port on the CPU."""
    return TorchPort()(config, params)


def torch_port_cuda(config: PortConfig, params: Sequence[np.ndarray]) -> TorchRun:
    """cprop-ref's torch port on the first CUDA device."""
    return TorchPort(device="cuda")(config, params)


def with_groups(factory: Any, port: TorchPort) -> Any:
    """``factory`` with the protocol's optional hooks (:mod:`.usage`) of ``port``: ``groups`` and,
    for cprop-ref's own torch optimizers, ``option_refusals``."""
    factory.groups = port.groups
    factory.option_refusals = option_refusals_of(port)
    return factory


with_groups(torch_port, TorchPort())
with_groups(torch_port_cuda, TorchPort(device="cuda"))
