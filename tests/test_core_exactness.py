"""fp64 exactness: mpnode's discrete adjoint equals autograd through the same scheme.

Tolerance: relative error <= 1e-10 (per gradient tensor, 2-norm). Both sides perform the
same floating-point operations up to summation order, so the difference is a few units
of float64 roundoff (~1e-16) amplified by at most a few hundred steps and the field's
Lipschitz constant; 1e-10 leaves orders of magnitude of margin yet would catch any
missing term (a dropped stage, a wrong time derivative), which changes gradients at the
1e-3..1 level.
"""
import pytest
import torch

import mpnode
from tests.reference_scheme import MLPField, TupleField, plain_odeint, rel_err

TOL = 1e-10
METHODS = sorted(mpnode.METHODS)


def _times(direction):
    t = torch.tensor([0.0, 0.3, 0.55, 1.0], dtype=torch.float64)
    return t if direction == "forward" else t.flip(0) - 0.2


def _gradients(solution, inputs, weights):
    loss = sum((s * w).sum() for s, w in zip(solution, weights)) if isinstance(solution, tuple) else (solution * weights).sum()
    return torch.autograd.grad(loss, inputs)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(3,), (4, 3), (2, 3, 2)], ids=["1d", "2d", "3d"])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("step_size", [None, 0.07])
def test_tensor_state_gradients_match_autograd(method, shape, direction, step_size):
    torch.manual_seed(0)
    field = MLPField(shape[-1]).double()
    y0 = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    t = _times(direction).requires_grad_(True)
    options = None if step_size is None else {"step_size": step_size}
    ours = mpnode.odeint(field, y0, t, method=method, options=options)
    ref = plain_odeint(field, y0, t, method=method, step_size=step_size)
    assert ours.shape == (len(t), *shape) and ours.dtype == torch.float64
    assert rel_err(ours, ref) <= TOL
    w = torch.randn_like(ref)
    inputs = [y0, t, *field.parameters()]
    for g_ours, g_ref in zip(_gradients(ours, inputs, w), _gradients(ref, inputs, w)):
        assert rel_err(g_ours, g_ref) <= TOL


@pytest.mark.parametrize("method", ["euler", "rk4", "rk38"])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("step_size", [None, 0.07])
def test_tuple_state_gradients_match_autograd(method, direction, step_size):
    torch.manual_seed(1)
    field = TupleField(3).double()
    z0 = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    l0 = torch.zeros(5, 1, dtype=torch.float64, requires_grad=True)
    t = _times(direction).requires_grad_(True)
    options = None if step_size is None else {"step_size": step_size}
    ours = mpnode.odeint(field, (z0, l0), t, method=method, options=options)
    ref = plain_odeint(field, (z0, l0), t, method=method, step_size=step_size)
    assert isinstance(ours, tuple) and [o.shape for o in ours] == [r.shape for r in ref]
    for o, r in zip(ours, ref):
        assert rel_err(o, r) <= TOL
    w = tuple(torch.randn_like(r) for r in ref)
    inputs = [z0, l0, t, *field.parameters()]
    for g_ours, g_ref in zip(_gradients(ours, inputs, w), _gradients(ref, inputs, w)):
        assert rel_err(g_ours, g_ref) <= TOL


def test_closure_with_explicit_params():
    """A plain function (no nn.Module) gets parameter gradients through params=."""
    torch.manual_seed(2)
    A = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    func = lambda t, y: torch.tanh(y @ A)  # noqa: E731
    y0 = torch.randn(4, 3, dtype=torch.float64)
    t = torch.linspace(0, 1, 5, dtype=torch.float64)
    (g_ours,) = torch.autograd.grad(mpnode.odeint(func, y0, t, params=[A])[-1].sum(), A)
    (g_ref,) = torch.autograd.grad(plain_odeint(func, y0, t)[-1].sum(), A)
    assert rel_err(g_ours, g_ref) <= TOL


def test_unused_output_times_and_first_output():
    """Cotangents at t[0] (the identity path) and at intermediate outputs both reach y0."""
    torch.manual_seed(3)
    field = MLPField(2).double()
    y0 = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    loss = lambda s: (s[0] ** 2).sum() + s[1].sum()  # noqa: E731  (no cotangent at t[-1])
    (g_ours,) = torch.autograd.grad(loss(mpnode.odeint(field, y0, t)), y0)
    (g_ref,) = torch.autograd.grad(loss(plain_odeint(field, y0, t)), y0)
    assert rel_err(g_ours, g_ref) <= TOL
