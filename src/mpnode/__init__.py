"""mpnode: mixed-precision fixed-grid Runge-Kutta solves for neural ODEs.

``mpnode.odeint`` is a drop-in for ``torchdiffeq.odeint`` with fixed-grid methods: network
evaluations run in fp16/bf16 under autocast, states, adjoints and gradients accumulate in
fp32, the discrete adjoint recomputes each step from a low-precision checkpoint, and
dynamic adjoint scaling keeps fp16 adjoints from underflowing.
"""
from .methods import METHODS, ButcherTableau, get_method, register_method
from .odeint import odeint
from .precision import PrecisionPolicy, fp32_island, resolve_policy, unit_roundoff
from .scaling import AdjointScalingError, DynamicScaler, NoScaler
from .solver import SolveStats

__version__ = "0.1.0"

__all__ = [
    "odeint",
    "ButcherTableau",
    "METHODS",
    "get_method",
    "register_method",
    "DynamicScaler",
    "NoScaler",
    "AdjointScalingError",
    "SolveStats",
    "PrecisionPolicy",
    "resolve_policy",
    "fp32_island",
    "unit_roundoff",
]
