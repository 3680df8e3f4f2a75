"""Dynamic adjoint scaling, on the paper's adjoint-scaling test problem and in isolation.

Problem (reference-experiments.md section 5): y' = -(a t^2 + b t + c) y, a = 8, b = -10,
c = 2^-16, t in [0, 2.65], 399 RK4 steps, y0 = 65504/180, L = y(T)^2 / 2. The adjoint falls
to ~1e-11, below fp16's smallest subnormal (6e-8), so an unscaled fp16 VJP returns zeros.
"""
import math

import pytest
import torch

import mpnode

A, B, C, T, N, Y0 = 8.0, -10.0, 2.0**-16, 2.65, 399, 65504 / 180


class Decay(torch.nn.Module):
    """The coefficient enters through a matmul, so autocast runs the VJP in fp16."""

    def __init__(self):
        super().__init__()
        self.coef = torch.nn.Parameter(torch.tensor([A, B, C]))

    def forward(self, t, y):
        powers = torch.stack([t * t, t, torch.ones_like(t)]).reshape(3, 1).to(y.dtype)
        rate = self.coef.reshape(1, 3) @ powers  # autocast: fp16 matmul
        return -(rate @ y.reshape(1, -1)).reshape(y.shape)


def analytic_gradients() -> torch.Tensor:
    coef = torch.tensor([A, B, C], dtype=torch.float64, requires_grad=True)
    y0 = torch.tensor(Y0, dtype=torch.float64, requires_grad=True)
    integral = coef[0] * T**3 / 3 + coef[1] * T**2 / 2 + coef[2] * T
    loss = 0.5 * (y0 * torch.exp(-integral)) ** 2
    g_y0, g_coef = torch.autograd.grad(loss, [y0, coef])
    return torch.cat([g_y0.reshape(1), g_coef])


def fp16_gradients(scaler):
    field = Decay()
    y0 = torch.tensor([Y0], requires_grad=True)
    with torch.autocast("cpu", dtype=torch.float16):
        sol = mpnode.odeint(field, y0, torch.tensor([0.0, T]), method="rk4", options={"step_size": T / N}, scaler=scaler)
    (0.5 * sol[-1].pow(2).sum()).backward()
    return torch.cat([y0.grad, field.coef.grad]).double()


def test_dynamic_scaling_recovers_fp16_gradients():
    """Tolerance 1e-2 (the reference's pass criterion): it covers RK4's discretization error
    (~1e-4 here, as fp32 shows) plus fp16 roundoff (u = 4.9e-4) with a wide margin."""
    scaler = mpnode.DynamicScaler()
    rel = ((fp16_gradients(scaler) - analytic_gradients()).abs() / analytic_gradients().abs())
    assert (rel <= 1e-2).all(), rel
    assert scaler.scale > 2.0**30  # it really had to scale the ~1e-11 adjoint up
    assert scaler.n_steps == N


def test_fp16_without_scaling_loses_the_gradient():
    """Documents why scaling exists: the underflowed VJP leaves relative errors near 1 or worse."""
    rel = ((fp16_gradients("none") - analytic_gradients()).abs() / analytic_gradients().abs())
    assert (rel >= 0.5).all(), rel


def test_auto_scaler_is_dynamic_for_fp16_only():
    from mpnode.precision import resolve_policy
    from mpnode.scaling import DynamicScaler, NoScaler, resolve_scaler

    with torch.autocast("cpu", dtype=torch.float16):
        assert isinstance(resolve_scaler("auto", resolve_policy(torch.float32, torch.device("cpu"))), DynamicScaler)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert isinstance(resolve_scaler("auto", resolve_policy(torch.float32, torch.device("cpu"))), NoScaler)
    assert isinstance(resolve_scaler("auto", resolve_policy(torch.float32, torch.device("cpu"))), NoScaler)


class Amplifier(torch.nn.Module):
    """A Jacobian with entries 2^12: a cotangent scaled to the default target (2^10) times
    h = 1/4 times 4 * 4096 is ~4e6, past fp16's maximum 65504, so the scaler must back off."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.full((4, 4), 4096.0))

    def forward(self, t, y):
        return torch.tanh(y @ self.weight.T)


def test_overflow_is_recomputed_with_smaller_scale_and_headroom_carries_over():
    scaler = mpnode.DynamicScaler(growth_interval=1000)
    y0 = torch.full((2, 4), 1e-6, requires_grad=True)
    t = torch.tensor([0.0, 1.0])
    with torch.autocast("cpu", dtype=torch.float16):
        sol = mpnode.odeint(Amplifier(), y0, t, method="euler", options={"step_size": 0.25}, scaler=scaler)
    sol[-1].sum().backward()
    assert torch.isfinite(y0.grad).all()
    assert scaler.n_overflows >= 1 and scaler.n_recomputations == scaler.n_overflows
    backoff = scaler.backoff
    assert backoff >= 1
    # A second backward with the same scaler starts from the learned headroom: no new overflow.
    overflows = scaler.n_overflows
    with torch.autocast("cpu", dtype=torch.float16):
        sol = mpnode.odeint(Amplifier(), y0, t, method="euler", options={"step_size": 0.25}, scaler=scaler)
    sol[-1].sum().backward()
    assert scaler.n_overflows == overflows
    state = scaler.state_dict()
    clone = mpnode.DynamicScaler()
    clone.load_state_dict(state)
    assert clone.state_dict() == state


def test_scale_follows_the_scaled_adjoint():
    """The scale is set from the *scaled* adjoint: S * max|a| lands in (target/2, target]."""
    scaler = mpnode.DynamicScaler()
    from mpnode.precision import resolve_policy

    with torch.autocast("cpu", dtype=torch.float16):
        scaler.begin_backward(resolve_policy(torch.float32, torch.device("cpu")))
    for adjoint_max in (1e-11, 3e-5, 1.0, 700.0):
        scale = scaler.scale_for(adjoint_max)
        assert 512 < scale * adjoint_max <= 1024
        assert math.log2(scale) == int(math.log2(scale))  # a power of two: scaling is exact


def test_zero_terminal_adjoint_is_skipped_not_infinite():
    """The reference computed an infinite scale from a zero adjoint; we skip such steps."""
    scaler = mpnode.DynamicScaler()
    field = Decay()
    y0 = torch.tensor([1.0], requires_grad=True)
    stats = mpnode.SolveStats()
    with torch.autocast("cpu", dtype=torch.float16):
        sol = mpnode.odeint(field, y0, torch.tensor([0.0, 0.5, 1.0]), options={"step_size": 0.1}, scaler=scaler, stats=stats)
    sol[1].sum().backward()  # no cotangent at t = 1: the last 5 steps have a zero adjoint
    assert stats.n_backward_steps_skipped == 5
    assert torch.isfinite(y0.grad).all() and y0.grad.item() != 0
    assert math.isfinite(scaler.scale)


class SqrtField(torch.nn.Module):
    """Finite forward, infinite derivative at y = 0: no scale can make its VJP finite."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))

    def forward(self, t, y):
        return torch.sqrt(y.abs()) * self.w


def test_unrecoverable_overflow_raises_naming_step_and_scale():
    field = SqrtField()
    y0 = torch.zeros(3, requires_grad=True)
    before = {k: v.clone() for k, v in field.state_dict().items()}
    with torch.autocast("cpu", dtype=torch.float16):
        sol = mpnode.odeint(field, y0, torch.tensor([0.0, 1.0]), method="euler", options={"step_size": 0.25}, scaler="dynamic")
    with pytest.raises(mpnode.AdjointScalingError, match=r"step 3 .*scale tried"):
        sol[-1].sum().backward()
    # The parameters are never left in another dtype or with other values.
    for k, v in field.state_dict().items():
        assert v.dtype == before[k].dtype and torch.equal(v, before[k])


def test_grad_scaler_overflow_gives_nonfinite_grads_not_an_exception():
    """With torch.amp.GradScaler on the loss and no adjoint scaling, an fp16 overflow in the
    solve's backward must surface as inf/NaN gradients, so GradScaler skips the step."""
    torch.manual_seed(0)
    field = torch.nn.Sequential(torch.nn.Linear(4, 4))
    func = lambda t, y: field(y)  # noqa: E731
    params = list(field.parameters())
    opt = torch.optim.SGD(params, lr=0.1)
    grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**60)
    before = [p.detach().clone() for p in params]
    y0 = torch.randn(3, 4)
    with torch.autocast("cpu", dtype=torch.float16):
        sol = mpnode.odeint(func, y0, torch.tensor([0.0, 1.0]), options={"step_size": 0.25}, scaler="none", params=params)
    grad_scaler.scale(sol[-1].sum()).backward()
    assert not all(torch.isfinite(p.grad).all() for p in params)
    grad_scaler.step(opt)
    grad_scaler.update()
    assert grad_scaler.get_scale() < 2.0**60
    assert all(torch.equal(p, b) for p, b in zip(params, before))  # the step was skipped
