"""The port adapter for PyTorch optimizers: cprop-ref's own torch port by default, or any
``torch.optim.Optimizer`` classes with the authors' constructor signatures.

``TorchPort(classes={"CPropSGD": ..., "CPropAdam": ..., "CProp": ...}, device="cuda")``
adapts another package; scales and CProp statistics are read through the optimizer's
``scales()`` / ``cprop_statistics()`` methods when it has them, and states are injected
through its ``state`` dict with the protocol's names (torch's own SGD / Adam names for a
wrapped base optimizer).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .config import PortConfig
from .protocol import Unsupported

try:
    import torch
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "cprop_ref.conformance.torch_adapter needs PyTorch, the optional 'torch' extra: pip install 'cprop-ref[torch]'"
    ) from err

_TORCH_DTYPES = {"float16": torch.float16, "float32": torch.float32, "float64": torch.float64}


def _cprop_ref_classes() -> dict[str, type]:
    from ..torch import CProp, CPropAdam, CPropSGD

    return {"CPropSGD": CPropSGD, "CPropAdam": CPropAdam, "CProp": CProp}


def _to_numpy(x: Any) -> np.ndarray:
    return x.detach().to("cpu").numpy().copy()


class TorchRun:
    """A torch optimizer behind the port protocol."""

    def __init__(self, optimizer: Any, params: list[Any], config: PortConfig, device: str) -> None:
        self.optimizer = optimizer
        self.tensors = params
        self.config = config
        self.device = device

    def step(self, grads: Sequence[np.ndarray | None]) -> None:
        for p, g in zip(self.tensors, grads):
            p.grad = None if g is None else torch.from_numpy(np.array(g, copy=True)).to(self.device)
        self.optimizer.step()

    def params(self) -> list[np.ndarray]:
        return [_to_numpy(p) for p in self.tensors]

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

        for p, st in zip(self.tensors, states):
            arrays = {k: tensor(v, p) for k, v in st.items() if k != "step" and v is not None}
            if cfg.optimizer == "CProp":
                opt.state[p] = {"step": int(st["step"]), "cprop_m": arrays["cprop_m"], "cprop_v": arrays["cprop_v"]}
                if cfg.base == "SGD":
                    base = {"momentum_buffer": arrays["momentum_buffer"]} if "momentum_buffer" in arrays else {}
                else:
                    base = {k: arrays[k] for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if k in arrays}
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
        classes = self.classes or _cprop_ref_classes()
        if config.dtype not in _TORCH_DTYPES:
            raise Unsupported(f"dtype {config.dtype}")
        tensors = [
            torch.from_numpy(np.array(p, dtype=config.np_dtype, copy=True)).to(self.device).requires_grad_(False)
            for p in params
        ]
        if config.optimizer not in classes:
            raise Unsupported(f"no class for {config.optimizer}")
        if config.optimizer == "CProp":
            base_cls = getattr(torch.optim, config.base or "")
            base_hp = dict(config.base_hyperparams)
            base_hp.setdefault("foreach", False)  # one code path, the documented per-tensor one
            base = base_cls(tensors, **base_hp)
            optimizer = classes["CProp"](base, **config.hyperparams)
        else:
            optimizer = classes[config.optimizer](tensors, **config.hyperparams)
        return TorchRun(optimizer, tensors, config, self.device)


def torch_port(config: PortConfig, params: Sequence[np.ndarray]) -> TorchRun:
    """cprop-ref's torch port on the CPU."""
    return TorchPort()(config, params)


def torch_port_cuda(config: PortConfig, params: Sequence[np.ndarray]) -> TorchRun:
    """cprop-ref's torch port on the first CUDA device."""
    return TorchPort(device="cuda")(config, params)
