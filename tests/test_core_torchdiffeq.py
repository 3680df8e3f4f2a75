"""fp32 agreement with the torchdiffeq baseline on the same fixed-grid scheme.

torchdiffeq's fixed-grid "rk4" is Kutta's 3/8 rule, so it is compared with mpnode's
"rk38"; "euler" and "midpoint" are the same schemes in both. Tolerance: rtol 1e-5 on
solutions and gradients (2-norm relative error): both run the same arithmetic in float32
in a different order, so they differ by float32 roundoff (~1e-7) amplified over 20 steps;
1e-5 leaves margin yet catches any difference of scheme (1e-3 or more here).
"""
import pytest
import torch
import torchdiffeq

import mpnode
from tests.reference_scheme import MLPField, rel_err

PAIRS = [("rk38", "rk4"), ("euler", "euler"), ("midpoint", "midpoint")]


@pytest.mark.parametrize("ours,theirs", PAIRS)
def test_matches_torchdiffeq_fp32(ours, theirs):
    torch.manual_seed(0)
    field = MLPField(4, width=32)
    y0 = torch.randn(8, 4, requires_grad=True)
    t = torch.linspace(0.0, 1.0, 21)
    w = torch.randn(21, 8, 4)
    inputs = [y0, *field.parameters()]
    sol_ours = mpnode.odeint(field, y0, t, method=ours)
    sol_theirs = torchdiffeq.odeint(field, y0, t, method=theirs)
    assert rel_err(sol_ours, sol_theirs) <= 1e-5
    g_ours = torch.autograd.grad((sol_ours * w).sum(), inputs)
    g_theirs = torch.autograd.grad((sol_theirs * w).sum(), inputs)
    for a, b in zip(g_ours, g_theirs):
        assert rel_err(a, b) <= 1e-5


def test_rk4_is_not_torchdiffeq_rk4():
    """Documents the naming trap: classical RK4 differs from torchdiffeq's 3/8-rule "rk4"."""
    torch.manual_seed(0)
    field = MLPField(4, width=32, scale=4.0)
    y0 = torch.randn(8, 4)
    t = torch.linspace(0.0, 2.0, 3)
    with torch.no_grad():
        ours, theirs = mpnode.odeint(field, y0, t, method="rk4"), torchdiffeq.odeint(field, y0, t, method="rk4")
        same = mpnode.odeint(field, y0, t, method="rk38")
    assert rel_err(ours, theirs) > 1e-4  # two 4th-order schemes, different error constants
    assert rel_err(same, theirs) <= 1e-5
