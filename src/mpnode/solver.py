"""The autograd Function of a fixed-grid explicit Runge-Kutta solve.

Forward: ``y_{n+1} = y_n + h_n * Phi(low(y_n), t_n, h_n)``. The increment ``Phi`` (every
evaluation of the vector field) reads the state rounded to the checkpoint dtype and runs
under the caller's autocast; the state update and the outputs stay in the state's dtype.
Only ``low(y_n)`` is kept per step, so the memory between output times is one
low-precision state per step.

Backward: the discrete adjoint of exactly that computation. From the last grid point,
each step's graph is rebuilt from its checkpoint and one vector-Jacobian product gives

    a_n   = a_{n+1} + (d(h Phi)/dy)^T (S a_{n+1}) / S
    g_th += (d(h Phi)/dtheta)^T (S a_{n+1}) / S

with ``S`` the adjoint scale of the step (1 without scaling), the VJP in low precision and
the accumulators in fp32 (or the state's dtype when wider). Output cotangents are added
at the grid points that are output times. Time gradients flow through the stage times
``t_n + c_i h_n`` and the step ``h_n``, so they work for any state shape.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch.autograd.function import once_differentiable

from .methods import ButcherTableau
from .precision import PrecisionPolicy

__all__ = ["Grid", "SolveStats", "solve"]


@dataclass(frozen=True)
class Grid:
    """The solver grid: output interval ``k`` of ``t`` is split into ``substeps[k]`` equal steps.

    Grid point ``j`` of interval ``k`` is ``t[k] + j * h_k`` with ``h_k = (t[k+1] - t[k]) / m_k``,
    which is linear in ``t``: that is what the time gradient differentiates.
    """

    substeps: tuple[int, ...]

    @property
    def n_steps(self) -> int:
        return sum(self.substeps)

    def steps(self):
        """Yield ``(n, k, j, m)``: global step index, interval, index within it, substeps."""
        n = 0
        for k, m in enumerate(self.substeps):
            for j in range(m):
                yield n, k, j, m
                n += 1


@dataclass
class SolveStats:
    """Statistics of one solve, filled in by :func:`mpnode.odeint` when passed as ``stats=``."""

    method: str = ""
    n_steps: int = 0
    n_forward_evals: int = 0
    n_backward_evals: int = 0
    n_backward_steps_skipped: int = 0
    eval_dtype: torch.dtype | None = None
    checkpoint_dtype: torch.dtype | None = None
    checkpoint_bytes: int = 0
    output_bytes: int = 0
    scales: list[float] = field(default_factory=list)


def _increment(func, tableau: ButcherTableau, policy: PrecisionPolicy, y, t_n, h, stats, counter):
    """Phi(y, t_n, h) = sum_i b_i k_i: vector field under the evaluation policy, sums in y's dtype.

    Stage values stay in the dtype func returned (half the bytes under autocast) and are
    upcast only where they are combined; each is dropped after its last use, and the
    weighted sum is accumulated as the stages come, so few state-sized buffers live at once.
    """
    stages: list[torch.Tensor | None] = []
    total = None
    for i in range(tableau.stages):
        with policy.accumulation():
            y_i = y
            for j, (a_ij, k_j) in enumerate(zip(tableau.a[i], stages)):
                if a_ij != 0.0:
                    y_i = y_i + (h * a_ij) * k_j.to(y.dtype)
            t_i = t_n + tableau.c[i] * h if tableau.c[i] != 0.0 else t_n
        with policy.evaluation():
            k_i = func(t_i, y_i)
        del y_i
        setattr(stats, counter, getattr(stats, counter) + 1)
        stages.append(k_i)
        with policy.accumulation():
            if tableau.b[i] != 0.0:
                if total is None:
                    total = tableau.b[i] * k_i.to(y.dtype)
                else:  # in place: nothing saved for backward depends on total's storage
                    total.add_(k_i.to(y.dtype), alpha=tableau.b[i])
        for j in range(i + 1):
            if stages[j] is not None and tableau.last_use[j] <= i:
                stages[j] = None
        del k_i
    return total


class _FixedGridSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, problem: "_Problem", y0: torch.Tensor, t: torch.Tensor, *params: torch.Tensor):
        policy, grid = problem.policy, problem.grid
        times = t.detach().to(problem.time_dtype)
        outputs = torch.empty((len(t),) + tuple(y0.shape), dtype=policy.state_dtype, device=y0.device)
        # Without a backward to come (inference, torch.no_grad), no checkpoints are kept:
        # memory stays O(1) in the number of steps, and the arithmetic is the same.
        keep = problem.differentiable
        shape = (grid.n_steps if keep else 1,) + tuple(y0.shape)
        checkpoints = torch.empty(shape, dtype=policy.checkpoint_dtype, device=y0.device)
        y = y0.detach().to(policy.state_dtype)
        outputs[0] = y
        for n, k, j, m in grid.steps():
            h = (times[k + 1] - times[k]) / m
            t_n = times[k] + j * h
            slot = n if keep else 0
            checkpoints[slot] = y
            # Phi reads exactly what the backward will read: the checkpoint.
            y_low = checkpoints[slot].to(policy.state_dtype) if policy.checkpoint_dtype != policy.state_dtype else y
            increment = _increment(problem.func, problem.tableau, policy, y_low, t_n, h.to(y.dtype), problem.stats, "n_forward_evals")
            with policy.accumulation():
                y = y + h.to(y.dtype) * increment
            if j == m - 1:
                outputs[k + 1] = y
        ctx.problem = problem
        ctx.checkpoints = checkpoints if keep else None
        ctx.save_for_backward(t, *params)
        stats = problem.stats
        stats.n_steps = grid.n_steps
        stats.eval_dtype = policy.eval_dtype
        stats.checkpoint_dtype = policy.checkpoint_dtype
        stats.checkpoint_bytes = checkpoints.numel() * checkpoints.element_size() if keep else 0
        stats.output_bytes = outputs.numel() * outputs.element_size()
        return outputs

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_outputs: torch.Tensor):
        problem: _Problem = ctx.problem
        checkpoints = ctx.checkpoints
        t, *params = ctx.saved_tensors
        try:
            grads = _discrete_adjoint(problem, checkpoints, t, params, grad_outputs, ctx.needs_input_grad)
        finally:
            # Free the checkpoints as soon as the backward is done, also when it raised.
            ctx.checkpoints = None
        return grads


def _discrete_adjoint(problem, checkpoints, t, params, grad_outputs, needs_input_grad):
    policy, grid, scaler = problem.policy, problem.grid, problem.scaler
    acc = policy.accumulate_dtype
    want_t = needs_input_grad[2]
    times = t.detach().to(problem.time_dtype)
    time_acc = torch.promote_types(problem.time_dtype, torch.float32)
    grad_outputs = grad_outputs.to(acc)

    adjoint = torch.zeros_like(grad_outputs[0])
    param_grads = [torch.zeros_like(p, dtype=torch.promote_types(p.dtype, acc)) for p in params]
    grad_t = torch.zeros(len(t), dtype=time_acc, device=t.device) if want_t else None
    scaler.begin_backward(policy)

    steps = list(grid.steps())
    for n, k, j, m in reversed(steps):
        if j == m - 1:  # grid point n + 1 is output time k + 1
            adjoint.add_(grad_outputs[k + 1])
        adjoint_max = None
        if scaler.needs_adjoint_size:
            adjoint_max = adjoint.abs().max().item()
            if adjoint_max == 0.0:
                # A zero cotangent gives an exactly zero VJP: nothing to recompute.
                problem.stats.n_backward_steps_skipped += 1
                continue
        scale = scaler.scale_for(adjoint_max)
        checked = scaler.checks_finite and adjoint_max is not None and math.isfinite(adjoint_max)
        while True:
            step_out, inputs = _recompute_step(problem, checkpoints[n], times, k, j, m, params, want_t)
            # Scaling by a power of two in place is exact both ways and saves a state-sized copy.
            adjoint.mul_(scale)
            try:
                vjp = torch.autograd.grad(step_out, inputs, adjoint.to(step_out.dtype), allow_unused=True)
            finally:
                adjoint.mul_(1.0 / scale)
            if not checked or _all_finite(vjp):
                break
            if not bool(torch.isfinite(step_out).all()):
                break  # the forward step itself is non-finite: no scale can help, let it propagate
            del step_out, vjp
            scale = scaler.after_overflow(n, scale, adjoint_max)
        del step_out
        scaler.after_success(scale)
        problem.stats.scales.append(scale)
        inv_scale = 1.0 / scale
        adjoint.add_(vjp[0], alpha=inv_scale)
        for acc_grad, g in zip(param_grads, vjp[1 : 1 + len(params)]):
            if g is not None:
                acc_grad.add_(g.to(acc_grad.dtype), alpha=inv_scale)
        if want_t:
            _accumulate_time_grad(grad_t, vjp[-2], vjp[-1], k, j, m, inv_scale)
        del vjp
    adjoint.add_(grad_outputs[0])

    grad_y0 = adjoint.to(problem.y0_dtype) if needs_input_grad[1] else None
    grad_t_out = grad_t.to(t.dtype) if want_t else None
    grad_params = [g.to(p.dtype) for g, p in zip(param_grads, params)]
    return (None, grad_y0, grad_t_out, *grad_params)


def _recompute_step(problem, checkpoint, times, k, j, m, params, want_t):
    """Rebuild step n's graph from its checkpoint; return h * Phi and the VJP inputs."""
    policy = problem.policy
    # The VJP input is the checkpoint itself: its state-dtype copy below is then transient
    # (autocast keeps its own low-precision cast for the backward), which keeps one
    # state-sized buffer fewer alive during the VJP. The four stage contributions are still
    # summed in the state's dtype; only their sum is rounded to the checkpoint dtype, an
    # error of the same order as the low-precision VJP's own.
    checkpoint = checkpoint.detach().requires_grad_(True)
    t_k, t_k1 = times[k], times[k + 1]
    h = ((t_k1 - t_k) / m).detach().requires_grad_(want_t)
    t_n = (t_k + j * h.detach()).detach().requires_grad_(want_t)
    with torch.enable_grad():
        h_state = h.to(policy.state_dtype)
        y_low = checkpoint.to(policy.state_dtype)
        increment = _increment(problem.func, problem.tableau, policy, y_low, t_n, h_state, problem.stats, "n_backward_evals")
        del y_low
        with policy.accumulation():
            step_out = h_state * increment
    inputs = [checkpoint, *params]
    if want_t:
        inputs += [t_n, h]
    return step_out, inputs


def _all_finite(tensors: Sequence[torch.Tensor | None]) -> bool:
    flags = [torch.isfinite(g).all() for g in tensors if g is not None]
    return bool(torch.stack(flags).all()) if flags else True


def _accumulate_time_grad(grad_t, g_tn, g_h, k, j, m, inv_scale):
    """Chain d/dt_n and d/dh of one step to the output times: t_n = t_k + j h, h = (t_{k+1} - t_k) / m."""
    g_tn = torch.zeros((), dtype=grad_t.dtype, device=grad_t.device) if g_tn is None else g_tn.to(grad_t.dtype)
    g_h = torch.zeros((), dtype=grad_t.dtype, device=grad_t.device) if g_h is None else g_h.to(grad_t.dtype)
    # total d/dh including t_n's dependence on h (t_n = t_k + j h)
    g_h_total = (g_h + j * g_tn) * inv_scale
    grad_t[k] += g_tn * inv_scale - g_h_total / m
    grad_t[k + 1] += g_h_total / m


@dataclass
class _Problem:
    func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    tableau: ButcherTableau
    policy: PrecisionPolicy
    grid: Grid
    scaler: object
    stats: SolveStats
    time_dtype: torch.dtype
    y0_dtype: torch.dtype
    differentiable: bool


def solve(func, y0, t, params, tableau, policy, grid, scaler, stats) -> torch.Tensor:
    """Run the solve through the autograd Function (inputs already validated)."""
    problem = _Problem(
        func=func,
        tableau=tableau,
        policy=policy,
        grid=grid,
        scaler=scaler,
        stats=stats,
        time_dtype=torch.promote_types(t.dtype, policy.state_dtype),
        y0_dtype=y0.dtype,
        # autograd.Function reports needs_input_grad even under no_grad: decide here.
        differentiable=torch.is_grad_enabled() and any(x.requires_grad for x in (y0, t, *params)),
    )
    stats.method = tableau.name
    return _FixedGridSolve.apply(problem, y0, t, *params)
