"""The public entry point: argument checks, grid construction, precision policy, dispatch."""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .methods import ButcherTableau, get_method
from .precision import resolve_policy
from .scaling import resolve_scaler
from .solver import Grid, SolveStats, solve

__all__ = ["odeint"]

_OPTIONS = ("step_size",)


def odeint(
    func: Callable,
    y0: torch.Tensor | Sequence[torch.Tensor],
    t: torch.Tensor,
    *,
    method: str | ButcherTableau = "rk4",
    options: dict[str, Any] | None = None,
    scaler: Any = "auto",
    params: Sequence[torch.Tensor] | None = None,
    stats: SolveStats | None = None,
):
    """Solve ``dy/dt = func(t, y)`` on a fixed grid with an explicit Runge-Kutta method.

    Drop-in for ``torchdiffeq.odeint`` with fixed-grid methods, differentiated by a
    memory-lean discrete adjoint and ready for mixed precision.

    Args:
        func: ``func(t, y)`` returning ``dy/dt`` with ``y``'s shape (a tuple of such tensors
            for tuple states); ``t`` is a 0-dim tensor. Usually an ``nn.Module``: its
            parameters that require grad receive gradients. It must be deterministic (the
            backward recomputes it).
        y0: initial state, a floating tensor of any shape, or a tuple of tensors of one
            floating dtype on one device.
        t: 1-D tensor of output times, at least 2, strictly increasing or strictly
            decreasing, finite, on ``y0``'s device. Gradients flow to ``t`` if it requires grad.
        method: ``"euler"``, ``"midpoint"``, ``"heun"``, ``"ralston"``, ``"rk4"`` (classical),
            ``"rk38"`` (3/8 rule, torchdiffeq's fixed-grid ``"rk4"``), or a ``ButcherTableau``.
        options: ``{"step_size": h}`` splits each output interval into ``ceil(|dt| / h)``
            equal steps, so the grid hits every output time. Without it the grid is ``t``.
        scaler: adjoint scaling: ``"auto"`` (dynamic under fp16 autocast, none otherwise),
            ``"none"``, ``"dynamic"``, or a :class:`mpnode.DynamicScaler` kept by the caller.
        params: the tensors to differentiate ``func`` with respect to, when ``func`` is not an
            ``nn.Module`` (default: its parameters that require grad).
        stats: a :class:`SolveStats` to fill with step counts, dtypes and checkpoint bytes.

    Precision: when autocast is enabled for ``y0``'s device type, every evaluation of
    ``func`` runs under that autocast dtype, the state update runs in ``y0``'s dtype with
    autocast off, and one checkpoint per step is stored in the autocast dtype. Adjoint and
    gradients accumulate in fp32 (``y0``'s dtype when wider).

    Returns:
        The solution at every output time, shape ``(len(t), *y0.shape)`` in ``y0``'s dtype
        (a tuple of such tensors for tuple states).
    """
    if not callable(func):
        raise TypeError(f"func must be callable as func(t, y); got {type(func).__name__}")
    is_tuple = isinstance(y0, (tuple, list))
    y0_flat, unflatten = _flatten_state(y0) if is_tuple else (_check_y0(y0), None)
    _check_t(t, y0_flat.device)
    tableau = get_method(method)
    grid = _make_grid(t, options)
    params = _resolve_params(func, params)
    field = _TupleField(func, unflatten, tuple(y.shape for y in y0)) if is_tuple else func
    policy = resolve_policy(y0_flat.dtype, y0_flat.device)
    scaler_obj = resolve_scaler(scaler, policy)
    stats = stats if stats is not None else SolveStats()
    _probe(field, y0_flat, t, params, policy)
    solution = solve(field, y0_flat, t, params, tableau, policy, grid, scaler_obj, stats)
    if not is_tuple:
        return solution
    return tuple(part.reshape(len(t), *shape) for part, shape in zip(unflatten(solution, leading=1), (y.shape for y in y0)))


# ----------------------------------------------------------------------------- checks
def _check_y0(y0) -> torch.Tensor:
    if not isinstance(y0, torch.Tensor):
        raise TypeError(f"y0 must be a tensor or a tuple of tensors; got {type(y0).__name__}")
    if not y0.is_floating_point():
        raise TypeError(f"y0 must be a floating-point tensor (float64/32/16, bfloat16); got dtype {y0.dtype}: cast it with y0.float()")
    if not bool(torch.isfinite(y0).all()):
        raise ValueError("y0 contains NaN or infinite values: the initial state must be finite")
    return y0


def _check_t(t, device: torch.device) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t must be a 1-D tensor of output times; got {type(t).__name__}: use torch.tensor([...], device=y0.device)")
    if t.dim() != 1:
        raise ValueError(f"t must be 1-D (the output times); got shape {tuple(t.shape)}")
    if len(t) < 2:
        raise ValueError(f"t must hold at least 2 output times (start and end); got {len(t)}")
    if not t.is_floating_point():
        raise TypeError(f"t must be a floating-point tensor; got dtype {t.dtype}: use t.float()")
    if t.device != device:
        raise ValueError(f"t is on {t.device} but y0 is on {device}: move t with t.to(y0.device)")
    if not bool(torch.isfinite(t).all()):
        raise ValueError("t contains NaN or infinite values: output times must be finite")
    diffs = t[1:] - t[:-1]
    if not (bool((diffs > 0).all()) or bool((diffs < 0).all())):
        raise ValueError(f"t must be strictly increasing or strictly decreasing; got {t.tolist()}")


def _make_grid(t: torch.Tensor, options) -> Grid:
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise TypeError(f"options must be a dict such as {{'step_size': 0.01}}; got {type(options).__name__}")
    unknown = set(options) - set(_OPTIONS)
    if unknown:
        raise ValueError(f"options has unknown keys {sorted(unknown)}; accepted: {list(_OPTIONS)}")
    step_size = options.get("step_size")
    intervals = (t[1:] - t[:-1]).abs().tolist()
    if step_size is None:
        return Grid(tuple(1 for _ in intervals))
    if isinstance(step_size, torch.Tensor):
        if step_size.numel() != 1:
            raise ValueError(f"options['step_size'] must be a scalar; got a tensor of shape {tuple(step_size.shape)}")
        step_size = step_size.item()
    if isinstance(step_size, bool) or not isinstance(step_size, (int, float)) or not math.isfinite(step_size) or step_size <= 0:
        raise ValueError(f"options['step_size'] must be a positive finite number; got {step_size!r}")
    return Grid(substeps_for(intervals, step_size, t.dtype))


def substeps_for(intervals: Sequence[float], step_size: float, time_dtype: torch.dtype) -> tuple[int, ...]:
    """Equal steps per output interval, the fewest with length <= step_size.

    The tolerance of a few units of the time dtype's roundoff keeps e.g. an interval of
    fp32 2.65 split by 2.65 / 399 at 399 steps instead of 400.
    """
    tol = max(1e-9, 16 * torch.finfo(time_dtype).eps)
    return tuple(max(1, math.ceil(d / step_size * (1 - tol))) for d in intervals)


def _resolve_params(func, params) -> list[torch.Tensor]:
    if params is not None:
        params = list(params)
        for i, p in enumerate(params):
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"params[{i}] must be a tensor; got {type(p).__name__}")
        return [p for p in params if p.requires_grad]
    module = func if isinstance(func, nn.Module) else getattr(func, "__self__", None)
    if isinstance(module, nn.Module):
        return [p for p in module.parameters() if p.requires_grad]
    return []


def _probe(field, y0, t, params, policy) -> None:
    """Evaluate func once: check its output, and that it uses no grad-requiring tensor we do not know."""
    with torch.enable_grad() if torch.is_grad_enabled() else torch.no_grad(), policy.evaluation():
        out = field(t[0].detach().to(torch.promote_types(t.dtype, y0.dtype)), y0.detach())
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"func must return a tensor (a tuple of tensors for tuple states); got {type(out).__name__}")
    if out.shape != y0.shape:
        raise ValueError(f"func returned shape {tuple(out.shape)} but the state has shape {tuple(y0.shape)}: dy/dt must have y's shape")
    if not out.is_floating_point():
        raise TypeError(f"func returned dtype {out.dtype}; dy/dt must be floating point")
    if out.grad_fn is not None:
        unknown = _unknown_leaves(out, {id(p) for p in params})
        if unknown:
            shapes = ", ".join(str(tuple(x.shape)) for x in unknown[:5])
            raise ValueError(
                f"func uses {len(unknown)} tensor(s) that require grad but are not parameters known to odeint "
                f"(shapes {shapes}); their gradients would be silently lost: make func an nn.Module that "
                "holds them, or pass them as params=[...]"
            )


def _unknown_leaves(out: torch.Tensor, known: set[int]) -> list[torch.Tensor]:
    seen, stack, unknown = set(), [out.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None and id(variable) not in known:
            unknown.append(variable)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return unknown


# ----------------------------------------------------------------------------- tuple states
def _flatten_state(y0: Sequence[torch.Tensor]):
    y0 = tuple(y0)
    if not y0:
        raise ValueError("y0 is an empty tuple: give at least one tensor")
    for i, y in enumerate(y0):
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"y0[{i}] must be a tensor; got {type(y).__name__}")
        _check_y0(y)
    dtypes, devices = {y.dtype for y in y0}, {y.device for y in y0}
    if len(dtypes) > 1:
        raise TypeError(f"the tensors of y0 must share one dtype; got {sorted(map(str, dtypes))}: cast them, e.g. all .float()")
    if len(devices) > 1:
        raise ValueError(f"the tensors of y0 must be on one device; got {sorted(map(str, devices))}")
    sizes = [y.numel() for y in y0]

    def unflatten(flat: torch.Tensor, leading: int = 0):
        return tuple(flat.split(sizes, dim=leading))

    return torch.cat([y.reshape(-1) for y in y0]), unflatten


class _TupleField:
    """Presents a flat state to a func written for tuple states, and flattens its output."""

    def __init__(self, func, unflatten, shapes):
        self.func, self.unflatten, self.shapes = func, unflatten, shapes

    def __call__(self, t, flat):
        parts = tuple(p.view(s) for p, s in zip(self.unflatten(flat), self.shapes))
        out = self.func(t, parts)
        if not isinstance(out, (tuple, list)) or len(out) != len(self.shapes):
            raise TypeError(f"func must return a tuple of {len(self.shapes)} tensors for a tuple state; got {type(out).__name__}")
        for i, (o, s) in enumerate(zip(out, self.shapes)):
            if not isinstance(o, torch.Tensor) or o.shape != s:
                got = tuple(o.shape) if isinstance(o, torch.Tensor) else type(o).__name__
                raise ValueError(f"func returned {got} for state component {i}, which has shape {tuple(s)}")
        return torch.cat([o.reshape(-1).to(flat.dtype) for o in out])
