"""The hypernetwork CNF of the reference and its negative log-likelihood.

Vector field (time-dependent weights from a hypernetwork of t):
    f(z) = (1/width) sum_j tanh(z W_j + B_j) U_j,   W_j in R^{2x1}, U_j in R^{1x2}, B_j in R,
with U <- U * sigmoid(G). Its divergence is exact and cheap:
    trace(df/dz) = (1/width) sum_j (1 - tanh^2(s_j)) (U_j . W_j),   s_j = z W_j + B_j.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

DIM = 2


class HyperNetField(nn.Module):
    """dz/dt = f(t, z) and d(delta_logp)/dt = -trace(df/dz) for the state (z [N,2], delta_logp [N])."""

    def __init__(self, width: int = 128, hidden: int = 32, init_scale: float = 1.0):
        super().__init__()
        self.width = width
        self.hyper = nn.Sequential(
            nn.Linear(1, hidden), nn.Tanh(),
            nn.Linear(hidden, hidden), nn.Tanh(),
            nn.Linear(hidden, 3 * width * DIM + width),
        )
        if init_scale != 1.0:
            # Test knob: huge output weights force overflow in fp16 (the diverged-status path).
            with torch.no_grad():
                self.hyper[-1].weight.mul_(init_scale)
                self.hyper[-1].bias.mul_(init_scale)

    def field_weights(self, t: torch.Tensor):
        """W, U [width, 2] and B [width] at time t (computed under the caller's autocast)."""
        p = self.hyper(t.reshape(1, 1).to(self.hyper[0].weight.dtype)).reshape(-1)
        block = self.width * DIM
        w = p[:block].reshape(self.width, DIM)
        u = p[block:2 * block].reshape(self.width, DIM)
        g = p[2 * block:3 * block].reshape(self.width, DIM)
        b = p[3 * block:].reshape(self.width)
        return w, u * torch.sigmoid(g), b

    def forward(self, t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        z, _ = state
        w, u, b = self.field_weights(t)
        # The pre-activation and the trace (a sum of `width` terms) are fp32 islands: in fp16
        # they lose the small differences that the log-density integrates.
        island = torch.promote_types(z.dtype, torch.float32)  # at least fp32 (fp64 stays fp64)
        with torch.autocast(z.device.type, enabled=False):
            w32, u32 = w.to(island), u.to(island)
            h = torch.tanh(z.to(island) @ w32.T + b.to(island))
            trace = (1.0 - h * h) @ (u32 * w32).sum(dim=1) / self.width
        dz = h @ u / self.width  # low precision under autocast: the bulk of the work
        return dz, -trace


def log_normal(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) per row, in fp32."""
    z = z.float()
    return -0.5 * (z * z).sum(dim=1) - 0.5 * z.shape[1] * math.log(2 * math.pi)


Integrate = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def negative_log_likelihood(field: HyperNetField, x: torch.Tensor, integrate: Integrate, n_grid: int) -> torch.Tensor:
    """-log p(x) per sample: integrate (x, 0) from t=1 (data) to t=0 (latent), asking the solver
    for those two times only, so that the grid lives in the solver (low-precision checkpoints).

    With d(delta_logp)/dt = -trace and delta_logp(1) = 0, delta_logp(0) = int_0^1 trace dt and
    log p(x) = log N(z(0)) - delta_logp(0)."""
    t = torch.tensor([1.0, 0.0], device=x.device)
    zero = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
    z_t, delta_t = integrate(field, (x, zero), t, step_size=1.0 / (n_grid - 1), block="cnf")
    with torch.autocast(x.device.type, enabled=False):
        return -(log_normal(z_t[-1]) - delta_t[-1].float())


def generate(field: HyperNetField, z: torch.Tensor, integrate: Integrate, n_grid: int) -> torch.Tensor:
    """Push prior samples z from t=0 to t=1 (data space)."""
    t = torch.tensor([0.0, 1.0], device=z.device)
    zero = torch.zeros(z.shape[0], device=z.device, dtype=z.dtype)
    x_t, _ = integrate(field, (z, zero), t, step_size=1.0 / (n_grid - 1), block="cnf")
    return x_t[-1]
