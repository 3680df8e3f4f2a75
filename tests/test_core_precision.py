"""Mixed precision under CPU autocast: accuracy at the level of the format's roundoff.

Reference: the same scheme with the same steps in float64 (parameters cast to float64),
so the measured error is pure roundoff, not discretization error.
Tolerance: every relative error (solution, dL/dy0, dL/dtheta) <= 2 u_low, with u the unit
roundoff (bf16 2^-8, fp16 2^-11). The paper's bound is O(u_low) + O(u_high / h) with
constants near 1 for this mildly Lipschitz field (we observe 0.15-0.6 u); a method that
rounded the accumulated state to low precision each step would show errors growing like
n * u and fail at 1024 steps. "Does not grow": error(n_large) <= 1.5 error(64) + 0.1 u.
"""
import pytest
import torch

import mpnode
from tests.reference_scheme import MLPField, rel_err

LOW = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _solve_and_grad(field, y0, w, n, method, dtype):
    y0 = y0.clone().requires_grad_(True)
    t = torch.tensor([0.0, 1.0], dtype=y0.dtype)
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        sol = mpnode.odeint(field, y0, t, method=method, options={"step_size": 1.0 / n})
    assert sol.dtype == y0.dtype  # outputs come from the high-precision accumulator
    grads = torch.autograd.grad((sol[-1] * w.to(sol.dtype)).sum(), [y0, *field.parameters()])
    return sol[-1].detach(), grads[0], torch.cat([g.reshape(-1) for g in grads[1:]])


def _errors(low, n, method):
    torch.manual_seed(0)
    field = MLPField(8, width=32)
    field64 = MLPField(8, width=32).double()
    field64.load_state_dict(field.state_dict())
    y0, w = torch.randn(16, 8), torch.randn(16, 8)
    ours = _solve_and_grad(field, y0, w, n, method, LOW[low])
    ref = _solve_and_grad(field64, y0.double(), w.double(), n, method, None)
    u = mpnode.unit_roundoff(LOW[low])
    return [rel_err(a, b) / u for a, b in zip(ours, ref)]


@pytest.mark.parametrize("low", ["bf16", "fp16"])
@pytest.mark.parametrize("method,n_large", [("euler", 1024), ("rk4", 256), pytest.param("rk4", 1024, marks=pytest.mark.slow)])
def test_roundoff_level_and_no_growth(low, method, n_large):
    errs_64 = _errors(low, 64, method)
    errs_large = _errors(low, n_large, method)
    for name, e64, elarge in zip(("solution", "dL/dy0", "dL/dtheta"), errs_64, errs_large):
        assert e64 <= 2.0 and elarge <= 2.0, f"{name}: {e64:.2f} u at 64 steps, {elarge:.2f} u at {n_large}"
        assert elarge <= 1.5 * e64 + 0.1, f"{name} grows with steps: {e64:.2f} u -> {elarge:.2f} u"


def test_autocast_changes_the_computation_and_outputs_keep_state_precision():
    """The policy is really applied on the CPU (the reference's CUDA-only check did nothing there)."""
    torch.manual_seed(0)
    field = MLPField(4, width=16)
    y0 = torch.randn(8, 4)
    t = torch.tensor([0.0, 1.0])
    stats = mpnode.SolveStats()
    with torch.no_grad():
        fp32 = mpnode.odeint(field, y0, t, options={"step_size": 0.1})
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = mpnode.odeint(field, y0, t, options={"step_size": 0.1}, stats=stats)
    assert stats.eval_dtype == torch.bfloat16 and stats.checkpoint_dtype == torch.bfloat16
    assert bf16.dtype == torch.float32
    assert 0 < rel_err(bf16, fp32) < 2 * mpnode.unit_roundoff(torch.bfloat16)
    # The accumulated state is not rounded to bf16: most outputs are not bf16 numbers.
    assert (bf16[-1] != bf16[-1].bfloat16().float()).float().mean() > 0.9


def test_func_sees_autocast_in_forward_and_backward():
    """The backward re-enters the caller's autocast although it runs outside it."""
    seen = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 3)

        def forward(self, t, y):
            out = self.lin(y)
            seen.append((torch.is_grad_enabled(), out.dtype))
            return out

    y0 = torch.randn(2, 3, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sol = mpnode.odeint(Probe(), y0, torch.tensor([0.0, 1.0]), method="euler", options={"step_size": 0.5})
    seen.clear()
    sol[-1].sum().backward()
    assert seen and all(dtype == torch.bfloat16 for _, dtype in seen)
    assert all(grad for grad, _ in seen)
