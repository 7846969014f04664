"""The inputs of the three checks as plain data, and how to run one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .checks import check_closed_loop, check_injected_step, check_open_loop, check_resume
from .config import PortConfig
from .report import Coverage


@dataclass
class OpenLoopCase:
    """``grads[i][k]``: gradient of tensor ``k`` at step ``i + 1``, or ``None``."""

    config: PortConfig
    params: list[np.ndarray]
    grads: list[list[np.ndarray | None]]
    layouts: list[str] | None = None

    def run(self, port: Any, port_spec: str | None = None, coverage: Coverage | None = None) -> Coverage:
        return check_open_loop(
            port, self.config, self.params, self.grads, layouts=self.layouts, port_spec=port_spec, coverage=coverage
        )


@dataclass
class InjectedCase:
    """One step from ``states`` (the protocol's names, see :mod:`.protocol`)."""

    config: PortConfig
    params: list[np.ndarray]
    states: list[dict[str, Any]]
    grads: list[np.ndarray | None]
    layouts: list[str] | None = None

    def run(self, port: Any, port_spec: str | None = None, coverage: Coverage | None = None) -> Coverage:
        return check_injected_step(
            port,
            self.config,
            self.params,
            self.states,
            self.grads,
            layouts=self.layouts,
            port_spec=port_spec,
            coverage=coverage,
        )


@dataclass
class ClosedLoopCase:
    """The noisy diagonal quadratic ``g = curvature * x + noises[i]`` from ``start``."""

    config: PortConfig
    start: np.ndarray
    curvature: np.ndarray
    noises: np.ndarray

    def run(self, port: Any, port_spec: str | None = None, coverage: Coverage | None = None) -> Coverage:
        return check_closed_loop(
            port, self.config, self.start, self.curvature, self.noises, port_spec=port_spec, coverage=coverage
        )


@dataclass
class ResumeCase:
    """An open-loop stream with a save / restore through the port's own mechanism after ``resume_at`` steps."""

    config: PortConfig
    params: list[np.ndarray]
    grads: list[list[np.ndarray | None]]
    resume_at: int
    layouts: list[str] | None = None

    def run(self, port: Any, port_spec: str | None = None, coverage: Coverage | None = None) -> Coverage:
        return check_resume(
            port,
            self.config,
            self.params,
            self.grads,
            self.resume_at,
            layouts=self.layouts,
            port_spec=port_spec,
            coverage=coverage,
        )
