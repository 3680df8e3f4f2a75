"""Taylor tests of the gradients and convergence order of every method (float64)."""
import math

import pytest
import torch

import mpnode
from tests.reference_scheme import LinearField, MLPField

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _taylor_orders(loss_fn, x, grad, direction, eps0=1e-2, n=4):
    """Observed orders of |L(x+ev)-L(x)| (expect 1) and |L(x+ev)-L(x)-e<g,v>| (expect 2)."""
    base = loss_fn(x)
    slope = (grad * direction).sum().item()
    r0, r1 = [], []
    for i in range(n):
        eps = eps0 / 2**i
        value = loss_fn(x + eps * direction)
        r0.append(abs(value - base))
        r1.append(abs(value - base - eps * slope))
    o0 = [math.log2(a / b) for a, b in zip(r0, r0[1:])]
    o1 = [math.log2(a / b) for a, b in zip(r1, r1[1:])]
    return o0, o1


@pytest.mark.parametrize("wrt", ["y0", "params", "t"])
def test_taylor_remainder(wrt):
    """Remainders must show order 1 without the gradient term and 2 with it.

    Tolerance: observed orders within 0.2 of 1 and 2. With eps from 1e-2 to 1.25e-3 the
    third-order term is >= 100x below the second-order one and float64 roundoff (~1e-16 in
    a loss of size ~1) is far below the smallest remainder (~1e-7), so the orders are clean;
    a wrong gradient leaves the remainder at order 1 and fails by ~1.
    """
    torch.manual_seed(0)
    field = MLPField(3, width=8).double()
    y0 = torch.randn(4, 3, dtype=torch.float64)
    t = torch.tensor([0.0, 0.4, 1.0], dtype=torch.float64)
    w = torch.randn(3, 4, 3, dtype=torch.float64)
    params = list(field.parameters())
    flat0 = torch.nn.utils.parameters_to_vector(params).detach()

    def loss(y0_, t_, params_):
        torch.nn.utils.vector_to_parameters(params_, params)
        return (mpnode.odeint(field, y0_, t_, method="rk4", options={"step_size": 0.05}) * w).sum()

    args = {"y0": y0, "t": t, "params": flat0}
    x = args[wrt].clone().requires_grad_(wrt != "params")
    args[wrt] = x
    value = loss(**{k + "_": v for k, v in args.items()})
    if wrt == "params":  # vector_to_parameters copies data: differentiate the parameters
        grad = torch.nn.utils.parameters_to_vector(torch.autograd.grad(value, params))
    else:
        (grad,) = torch.autograd.grad(value, x)

    def loss_at(value):
        with torch.no_grad():
            return loss(**{k + "_": (value if k == wrt else v) for k, v in args.items()}).item()

    direction = torch.randn_like(x)
    if wrt == "t":
        direction = direction * 0.1  # keep t strictly increasing for every eps
    o0, o1 = _taylor_orders(loss_at, x.detach(), grad, direction)
    torch.nn.utils.vector_to_parameters(flat0, params)
    assert all(abs(o - 1) < 0.2 for o in o0), o0
    assert all(abs(o - 2) < 0.2 for o in o1), o1


@pytest.mark.parametrize("method", sorted(mpnode.METHODS))
def test_convergence_order(method):
    """Global error on y' = A y (exact: exp(tA) y0) falls like h^p.

    Tolerance: observed order within 0.25 of the nominal order, estimated from steps 16->32
    in float64 (errors 1e-2..1e-9, far above roundoff, well inside the asymptotic regime
    for this mildly damped rotation).
    """
    A = torch.tensor([[-0.1, 1.0], [-1.0, -0.1]], dtype=torch.float64)
    field = LinearField(A)
    y0 = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    t = torch.tensor([0.0, 2.0], dtype=torch.float64)
    exact = y0 @ torch.linalg.matrix_exp(2.0 * A).T
    errors = []
    for n in (16, 32):
        with torch.no_grad():
            y = mpnode.odeint(field, y0, t, method=method, options={"step_size": 2.0 / n})[-1]
        errors.append((y - exact).norm().item())
    order = math.log2(errors[0] / errors[1])
    assert abs(order - mpnode.get_method(method).order) < 0.25, (method, order, errors)
