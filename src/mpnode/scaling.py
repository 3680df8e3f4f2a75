"""Adjoint scaling: keeping low-precision vector-Jacobian products out of underflow.

In the discrete adjoint the cotangent fed to each step's low-precision VJP is ``S * a``,
with ``a`` the fp32 adjoint and ``S`` a power of two, and the results are divided by ``S``
in fp32. Powers of two make the scaling exact. Without it, fp16 adjoints that fall below
fp16's smallest subnormal (about 6e-8) become zero and the gradient is lost.

A scaler is a small object with this protocol, called by the solver once per step:

* ``begin_backward(policy)``: a backward pass starts.
* ``needs_adjoint_size`` (property): whether the solver must measure ``max|a|`` (a sync).
* ``scale_for(adjoint_max)``: the scale to try first for this step.
* ``checks_finite`` (property): whether the solver must test the step's results.
* ``after_overflow(step, scale, adjoint_max)``: the scale to retry with after non-finite
  results (or raise :class:`AdjointScalingError`).
* ``after_success(scale)``: the step was accepted.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from .precision import PrecisionPolicy

__all__ = ["AdjointScalingError", "NoScaler", "DynamicScaler", "resolve_scaler"]


class AdjointScalingError(FloatingPointError):
    """Raised when no power-of-two scale gives a finite low-precision VJP for a step."""


class NoScaler:
    """Scale 1, no checks: non-finite results propagate (so ``torch.amp.GradScaler`` sees them)."""

    needs_adjoint_size = False
    checks_finite = False

    def begin_backward(self, policy: PrecisionPolicy) -> None:
        pass

    def scale_for(self, adjoint_max: float | None) -> float:
        return 1.0

    def after_overflow(self, step: int, scale: float, adjoint_max: float) -> float:  # pragma: no cover
        raise AssertionError("NoScaler never checks for overflow")

    def after_success(self, scale: float) -> None:
        pass

    def summary(self) -> dict[str, Any]:
        return {"scaler": "none"}


class DynamicScaler:
    """Dynamic adjoint scaling with a learned headroom.

    Each step, the scale is the power of two that puts the *scaled* adjoint
    ``S * max|a|`` just at or below ``target / 2**backoff``: it follows the adjoint's size
    at once, whether it shrinks or grows (the reference compared the unscaled adjoint with
    the target, so its scale kept doubling into overflow). ``target`` defaults to
    ``1 / eps`` of the evaluation dtype (fp16: 1024), which leaves a factor 64 of headroom
    below fp16's maximum for the Jacobian to amplify the cotangent.

    On non-finite results the step is recomputed with half the scale and ``backoff`` grows
    by one; after ``growth_interval`` clean steps in a row it shrinks by one again. The
    backoff (and the counters) carry over between backward passes when the caller keeps
    the instance, which is how one scaler per ODE block learns its headroom.

    A zero adjoint needs no scale: the solver skips such steps (their VJP is exactly zero).
    """

    needs_adjoint_size = True
    checks_finite = True

    def __init__(
        self,
        target: float | None = None,
        growth_interval: int = 32,
        max_backoff: int = 64,
        max_scale: float = 2.0**100,
    ) -> None:
        if target is not None and not (math.isfinite(target) and target > 0):
            raise ValueError(f"target={target!r}: the scaled-adjoint target must be a positive finite number")
        if not (isinstance(growth_interval, int) and growth_interval >= 1):
            raise ValueError(f"growth_interval={growth_interval!r}: must be a positive integer")
        if not (isinstance(max_backoff, int) and max_backoff >= 1):
            raise ValueError(f"max_backoff={max_backoff!r}: must be a positive integer")
        self.target = target
        self.growth_interval = growth_interval
        self.max_backoff = max_backoff
        self.max_scale = max_scale
        self.backoff = 0
        self.scale = 1.0
        self.n_steps = 0
        self.n_overflows = 0
        self.n_recomputations = 0
        self._clean_steps = 0
        self._target_now = target if target is not None else 1024.0
        self._eval_dtype: torch.dtype | None = None

    # ------------------------------------------------------------------ protocol
    def begin_backward(self, policy: PrecisionPolicy) -> None:
        self._eval_dtype = policy.eval_dtype or policy.state_dtype
        if self.target is None:
            self._target_now = 1.0 / torch.finfo(self._eval_dtype).eps

    def scale_for(self, adjoint_max: float | None) -> float:
        if not adjoint_max or not math.isfinite(adjoint_max):
            self.scale = 1.0
            return 1.0
        exponent = math.floor(math.log2(self._target_now / adjoint_max)) - self.backoff
        self.scale = min(2.0**exponent, self.max_scale)
        return self.scale

    def after_overflow(self, step: int, scale: float, adjoint_max: float) -> float:
        self.n_overflows += 1
        self.n_recomputations += 1
        self._clean_steps = 0
        self.backoff += 1
        new_scale = scale / 2
        tiniest = torch.finfo(self._eval_dtype or torch.float16).smallest_normal * torch.finfo(
            self._eval_dtype or torch.float16
        ).eps
        if self.backoff > self.max_backoff or new_scale * adjoint_max < tiniest:
            self.backoff = min(self.backoff, self.max_backoff)
            raise AdjointScalingError(
                f"dynamic adjoint scaling found no finite scale at step {step} of the backward pass "
                f"(last scale tried {scale:.3g}, max|adjoint| {adjoint_max:.3g}); the vector-Jacobian "
                "product overflows even when the scaled adjoint underflows, so the vector field itself "
                "is non-finite there in low precision: lower the learning rate, keep that operation in "
                "fp32 (mpnode.fp32_island), or train in bf16"
            )
        self.scale = new_scale
        return new_scale

    def after_success(self, scale: float) -> None:
        self.n_steps += 1
        self._clean_steps += 1
        if self.backoff > 0 and self._clean_steps >= self.growth_interval:
            self.backoff -= 1
            self._clean_steps = 0

    # ------------------------------------------------------------------ reporting
    def summary(self) -> dict[str, Any]:
        """What experiments log: current scale, its exponent, overflows and recomputations."""
        return {
            "scale": self.scale,
            "log2_scale": math.log2(self.scale) if self.scale > 0 else float("-inf"),
            "backoff": self.backoff,
            "n_steps": self.n_steps,
            "n_overflows": self.n_overflows,
            "n_recomputations": self.n_recomputations,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "growth_interval": self.growth_interval,
            "max_backoff": self.max_backoff,
            "max_scale": self.max_scale,
            "backoff": self.backoff,
            "scale": self.scale,
            "n_steps": self.n_steps,
            "n_overflows": self.n_overflows,
            "n_recomputations": self.n_recomputations,
            "clean_steps": self._clean_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("target", "growth_interval", "max_backoff", "max_scale", "backoff", "scale",
                    "n_steps", "n_overflows", "n_recomputations"):
            setattr(self, key, state[key])
        self._clean_steps = state["clean_steps"]
        self._target_now = self.target if self.target is not None else self._target_now

    def __repr__(self) -> str:
        return (f"DynamicScaler(scale={self.scale:g}, backoff={self.backoff}, "
                f"overflows={self.n_overflows}, recomputations={self.n_recomputations})")


_SCALER_NAMES = ("auto", "none", "dynamic")


def resolve_scaler(scaler: Any, policy: PrecisionPolicy) -> NoScaler | DynamicScaler:
    """Turn the ``scaler`` argument of :func:`mpnode.odeint` into a scaler object."""
    if isinstance(scaler, str):
        if scaler == "auto":
            return DynamicScaler() if policy.eval_dtype == torch.float16 else NoScaler()
        if scaler == "none":
            return NoScaler()
        if scaler == "dynamic":
            return DynamicScaler()
    elif scaler is None:
        return NoScaler()
    elif all(hasattr(scaler, name) for name in ("begin_backward", "scale_for", "after_overflow", "after_success")):
        return scaler
    raise ValueError(
        f"scaler={scaler!r} is not understood; use one of {', '.join(map(repr, _SCALER_NAMES))}, "
        "or a mpnode.DynamicScaler instance that you keep across iterations"
    )
