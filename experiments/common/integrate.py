"""Solver dispatch: one `Integrator` per run, handed to the task's model, so that models call
`integrator(func, y0, t, step_size=h, block="name")` whatever the solver (mpnode or torchdiffeq).

It owns the persistent mpnode.DynamicScaler of every ODE block (keyed by block name): the scale
found in one iteration is the starting point of the next, and it is checkpointed with the run.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch


class Integrator:
    def __init__(self, solver: str, method: str, scaling: str, *, method_map: Mapping[str, str] | None = None,
                 scaler_options: Mapping[str, Any] | None = None):
        self.solver = solver
        self.method = method
        self.scaling = scaling
        self.scaler_options = dict(scaler_options or {})
        self.scalers: dict[str, Any] = {}
        if solver == "torchdiffeq":
            if method_map is None or method not in method_map:
                raise ValueError(
                    f"task.method={method} has no torchdiffeq equivalent; choose one of "
                    f"{sorted(method_map or {})} or solver=mpnode"
                )
            self.backend_method = method_map[method]
        else:
            self.backend_method = method

    @property
    def scheme(self) -> str:
        """The RK scheme really computed (torchdiffeq's 'rk4' is the 3/8 rule)."""
        if self.solver == "torchdiffeq" and self.backend_method == "rk4":
            return "rk38"
        return self.backend_method

    def __call__(self, func: Callable, y0, t: torch.Tensor, *, step_size: float, block: str = "ode"):
        if self.solver == "mpnode":
            return self._mpnode(func, y0, t, step_size, block)
        return self._torchdiffeq(func, y0, t, step_size)

    def _mpnode(self, func, y0, t, step_size, block):
        import mpnode

        # Evaluations (no_grad) have no backward, so they must not move the training scale.
        scaler: Any = "none"
        if self.scaling == "dynamic" and torch.is_grad_enabled():
            scaler = self.scaler(block)
        return mpnode.odeint(func, y0, t, method=self.method, options={"step_size": step_size}, scaler=scaler)

    def _torchdiffeq(self, func, y0, t, step_size):
        import torchdiffeq

        def grid(_func, _y0, t_solver):
            # torchdiffeq's own step_size grid may miss the output times by rounding; this grid
            # hits every output time with equal steps of at most step_size in each interval.
            return fixed_grid(t_solver, step_size)

        return torchdiffeq.odeint(func, y0, t, method=self.backend_method, options={"grid_constructor": grid})

    def scaler(self, block: str):
        if block not in self.scalers:
            import mpnode

            self.scalers[block] = mpnode.DynamicScaler(**self.scaler_options)
        return self.scalers[block]

    def summary(self) -> dict[str, float]:
        """Flat numbers for the metrics rows: each block's scaler state."""
        out: dict[str, float] = {}
        for block, scaler in self.scalers.items():
            for key, value in scaler.summary().items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    out[f"{block}_{key}"] = float(value)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {block: scaler.state_dict() for block, scaler in self.scalers.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for block, scaler_state in state.items():
            self.scaler(block).load_state_dict(scaler_state)


def fixed_grid(t: torch.Tensor, step_size: float) -> torch.Tensor:
    """Grid through every point of t with ceil(|interval| / step_size) equal steps per interval
    (rounded first, so that 1/(1/127) counts as 127 steps, not 128)."""
    pieces = []
    for a, b in zip(t[:-1].tolist(), t[1:].tolist()):
        n = max(1, math.ceil(round(abs(b - a) / step_size, 6)))
        pieces.append(torch.linspace(a, b, n + 1, dtype=t.dtype, device=t.device)[:-1])
    pieces.append(t[-1:])
    return torch.cat(pieces)
