"""Which precision x scaling x solver combinations are meaningful on which device.

The check runs before any work, so that a sweep skips an invalid job with its reason instead of
crashing, and a single run is refused with a message that says what to choose instead.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
SCALINGS = ("none", "grad", "dynamic")
SOLVERS = ("mpnode", "torchdiffeq")
LOW_PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class InvalidCombination(ValueError):
    """A configuration that must not run; the message names the keys and what to choose instead."""


@dataclass(frozen=True)
class DeviceCaps:
    """What the run's device can do, probed once (or given by hand in tests)."""

    device_type: str
    tf32: bool
    fp16_autocast: bool
    bf16_autocast: bool

    @classmethod
    def probe(cls, device: torch.device) -> "DeviceCaps":
        tf32 = device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8
        return cls(
            device_type=device.type,
            tf32=tf32,
            fp16_autocast=_autocast_works(device, torch.float16),
            bf16_autocast=_autocast_works(device, torch.bfloat16),
        )


def _autocast_works(device: torch.device, dtype: torch.dtype) -> bool:
    """True when a matmul under autocast(device, dtype) really computes in dtype (a tiny op, since
    an autocast that silently does nothing would make a 'low-precision' run an fp32 run)."""
    try:
        a = torch.ones(4, 4, device=device)
        with torch.autocast(device.type, dtype=dtype):
            return (a @ a).dtype == dtype
    except (RuntimeError, AssertionError):
        return False


def check_combination(precision: str, scaling: str, solver: str, caps: DeviceCaps) -> None:
    """Raise InvalidCombination when the combination must not run on this device."""
    if precision not in PRECISIONS:
        raise InvalidCombination(f"precision={precision} is unknown; choose one of {', '.join(PRECISIONS)}")
    if scaling not in SCALINGS:
        raise InvalidCombination(f"scaling={scaling} is unknown; choose one of {', '.join(SCALINGS)}")
    if solver not in SOLVERS:
        raise InvalidCombination(f"solver={solver} is unknown; choose one of {', '.join(SOLVERS)}")
    if scaling == "dynamic" and solver != "mpnode":
        raise InvalidCombination(
            "scaling=dynamic rescales the adjoint inside the mpnode solver and cannot work with "
            f"solver={solver}; choose solver=mpnode, or scaling=grad (GradScaler) with solver={solver}"
        )
    if scaling != "none" and precision != "fp16":
        raise InvalidCombination(
            f"scaling={scaling} with precision={precision}: {precision} has fp32's exponent range, so "
            "no gradient underflows and there is nothing to rescue; choose scaling=none (or precision=fp16)"
        )
    if precision == "tf32" and not caps.tf32:
        raise InvalidCombination(
            f"precision=tf32 needs a CUDA GPU with TF32 (Ampere or newer); this device ({caps.device_type}) "
            "has none, so the run would be an fp32 run; choose precision=fp32"
        )
    if precision == "fp16" and not caps.fp16_autocast:
        raise InvalidCombination(
            f"precision=fp16: float16 autocast does not work on this device ({caps.device_type}); "
            "choose precision=bf16 or fp32"
        )
    if precision == "bf16" and not caps.bf16_autocast:
        raise InvalidCombination(
            f"precision=bf16: bfloat16 autocast does not work on this device ({caps.device_type}); "
            "choose precision=fp16 or fp32"
        )


def resolve_device(spec: str) -> torch.device:
    """`auto` -> cuda when available, else cpu; anything else is checked, with a clear error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidCombination(f"device={spec} but no CUDA device is available; choose device=cpu or auto")
    return device
