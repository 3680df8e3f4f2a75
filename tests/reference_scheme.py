"""Test helpers: explicit Runge-Kutta schemes written plainly, and small vector fields.

The plain scheme is ordinary autograd through the same arithmetic that mpnode performs
(grid t[k] + j h_k with h_k = (t[k+1] - t[k]) / m_k, stage inputs y + h sum a_ij k_j,
update y + h sum b_i k_i), so in float64 its gradients must match mpnode's discrete
adjoint to rounding.
"""
from __future__ import annotations

import math

import torch
from torch import nn

import mpnode
from mpnode.odeint import substeps_for


def substeps(t: torch.Tensor, step_size: float | None) -> list[int]:
    # The step count is the grid's policy, tested on its own; the arithmetic below is what
    # these helpers check independently.
    if step_size is None:
        return [1] * (len(t) - 1)
    return list(substeps_for((t[1:] - t[:-1]).abs().tolist(), step_size, t.dtype))


def plain_odeint(func, y0, t, method="rk4", step_size=None):
    """Autograd through the scheme; y0 a tensor or a tuple (func then takes/returns tuples)."""
    tab = mpnode.get_method(method)
    is_tuple = isinstance(y0, tuple)
    add = (lambda u, v: tuple(a + b for a, b in zip(u, v))) if is_tuple else (lambda u, v: u + v)
    mul = (lambda c, u: tuple(c * a for a in u)) if is_tuple else (lambda c, u: c * u)
    y, outputs = y0, [y0]
    for k, m in enumerate(substeps(t, step_size)):
        h = (t[k + 1] - t[k]) / m
        for j in range(m):
            t_n = t[k] + j * h
            ks = []
            for i in range(tab.stages):
                y_i = y
                for a_ij, k_j in zip(tab.a[i], ks):
                    if a_ij != 0.0:
                        y_i = add(y_i, mul(h * a_ij, k_j))
                ks.append(func(t_n + tab.c[i] * h, y_i))
            inc = None
            for b_i, k_i in zip(tab.b, ks):
                if b_i != 0.0:
                    inc = mul(b_i, k_i) if inc is None else add(inc, mul(b_i, k_i))
            y = add(y, mul(h, inc))
        outputs.append(y)
    if is_tuple:
        return tuple(torch.stack([o[i] for o in outputs]) for i in range(len(y0)))
    return torch.stack(outputs)


class MLPField(nn.Module):
    """dy/dt = W2 tanh(W1 [y, t] + b1) + b2 on the last dimension of y (any leading shape)."""

    def __init__(self, dim: int, width: int = 16, scale: float = 1.0):
        super().__init__()
        self.l1 = nn.Linear(dim + 1, width)
        self.l2 = nn.Linear(width, dim)
        with torch.no_grad():
            self.l2.weight.mul_(scale)

    def forward(self, t, y):
        tt = t.expand(*y.shape[:-1], 1).to(y.dtype)
        return self.l2(torch.tanh(self.l1(torch.cat([y, tt], dim=-1))))


class TupleField(nn.Module):
    """A (z, logp)-style tuple field: dz = MLP(z, t), dlogp = -sum(tanh(z)^2 * c) per row."""

    def __init__(self, dim: int):
        super().__init__()
        self.mlp = MLPField(dim)
        self.c = nn.Parameter(torch.randn(dim) * 0.3)

    def forward(self, t, state):
        z, logp = state
        dz = self.mlp(t, z)
        dlogp = -(torch.tanh(z) ** 2 * self.c).sum(-1, keepdim=True) * (1 + t)
        return dz, dlogp


class LinearField(nn.Module):
    """dy/dt = y A^T with a fixed matrix A (exact solution y(t) = exp(tA) y0)."""

    def __init__(self, A: torch.Tensor):
        super().__init__()
        self.A = nn.Parameter(A.clone())

    def forward(self, t, y):
        return y @ self.A.T


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()
