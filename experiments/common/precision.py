"""The run's precision policy: backend TF32 flags, autocast context and the loss scaler."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .combos import LOW_PRECISION_DTYPES


@dataclass(frozen=True)
class RunPrecision:
    """precision (fp32, tf32, bf16, fp16) and scaling (none, grad, dynamic) of one run."""

    name: str
    scaling: str
    device: torch.device

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return LOW_PRECISION_DTYPES.get(self.name)

    def apply_backend_flags(self) -> None:
        """fp32 means real fp32: TF32 off, unless tf32 was chosen. Set for every run because the
        flags are process-global and a previous run in the same process may have changed them."""
        allow = self.name == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = allow
        torch.backends.cudnn.allow_tf32 = allow

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context that training-precision forward passes run in (a no-op for fp32/tf32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def make_grad_scaler(self, init_scale: float, growth_interval: int) -> torch.amp.GradScaler | None:
        if self.scaling != "grad":
            return None
        return torch.amp.GradScaler(self.device.type, init_scale=init_scale, growth_interval=growth_interval)


@contextlib.contextmanager
def full_precision():
    """No autocast on any device type (fp32 evaluation inside a low-precision run)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.autocast("cpu", enabled=False))
        if torch.cuda.is_available():
            stack.enter_context(torch.autocast("cuda", enabled=False))
        yield
