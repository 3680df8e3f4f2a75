"""Precision policy: which dtype the vector field runs in, and where fp32 must be kept.

The solver reads the autocast state of the *state's* device type (CUDA, CPU, or any other
device with autocast), so mixed precision is honored on the CPU too.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch

__all__ = ["PrecisionPolicy", "resolve_policy", "fp32_island", "unit_roundoff"]


@dataclass(frozen=True)
class PrecisionPolicy:
    """How one solve uses precision.

    ``device_type``: where autocast is read and re-entered (the backward usually runs
    outside the caller's autocast region, so it must be re-entered explicitly).
    ``eval_dtype``: the autocast dtype of the vector field, or ``None`` when autocast is off.
    ``state_dtype``: dtype of the state accumulator and of the outputs (y0's dtype).
    ``checkpoint_dtype``: dtype of the per-step checkpoints kept for the backward pass.
    ``accumulate_dtype``: dtype of the adjoint and gradient accumulators (fp32 at least).
    """

    device_type: str
    eval_dtype: torch.dtype | None
    state_dtype: torch.dtype
    checkpoint_dtype: torch.dtype
    accumulate_dtype: torch.dtype

    @property
    def autocast_enabled(self) -> bool:
        return self.eval_dtype is not None

    def evaluation(self) -> contextlib.AbstractContextManager:
        """Context in which the vector field is evaluated (forward and recomputation)."""
        if self.eval_dtype is None:
            return torch.autocast(self.device_type, enabled=False)
        return torch.autocast(self.device_type, dtype=self.eval_dtype, enabled=True)

    def accumulation(self) -> contextlib.AbstractContextManager:
        """Context for state updates and accumulators: autocast off, full precision."""
        return torch.autocast(self.device_type, enabled=False)


def _autocast_state(device_type: str) -> tuple[bool, torch.dtype | None]:
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except (RuntimeError, TypeError):  # a device type without autocast support
        return False, None
    return enabled, (torch.get_autocast_dtype(device_type) if enabled else None)


def resolve_policy(state_dtype: torch.dtype, device: torch.device) -> PrecisionPolicy:
    """Read the caller's autocast state for ``device`` and derive the solve's dtypes."""
    enabled, eval_dtype = _autocast_state(device.type)
    # Autocast only lowers precision: a state already in (or below) the autocast dtype's
    # width is evaluated as it is.
    if enabled and torch.finfo(eval_dtype).bits >= torch.finfo(state_dtype).bits:
        enabled, eval_dtype = False, None
    checkpoint_dtype = eval_dtype if enabled else state_dtype
    accumulate_dtype = torch.promote_types(state_dtype, torch.float32)
    return PrecisionPolicy(device.type, eval_dtype, state_dtype, checkpoint_dtype, accumulate_dtype)


@contextlib.contextmanager
def fp32_island(device_type: str = "cuda") -> Iterator[None]:
    """Run a block in fp32 inside an autocast region.

    For operations whose accuracy needs fp32 but that the autocast policy may leave in
    low precision (reductions of many terms, pre-activations whose error is amplified,
    log-determinant traces). Cast the block's inputs with ``.float()`` yourself.
    """
    with torch.autocast(device_type, enabled=False):
        yield


def unit_roundoff(dtype: torch.dtype) -> float:
    """Unit roundoff u = eps / 2 of a floating dtype (fp16: 2^-11, bf16: 2^-8, fp32: 2^-24)."""
    return torch.finfo(dtype).eps / 2
