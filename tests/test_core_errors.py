"""Bad input gets a clear error naming the argument and what is accepted."""
import pytest
import torch

import mpnode
from tests.reference_scheme import MLPField

FIELD = MLPField(2)
Y0 = torch.zeros(3, 2)
T = torch.tensor([0.0, 1.0])


@pytest.mark.parametrize(
    "t,error,match",
    [
        ([0.0, 1.0], TypeError, "t must be a 1-D tensor"),
        (torch.zeros(2, 2), ValueError, "t must be 1-D"),
        (torch.tensor([0.0]), ValueError, "at least 2 output times"),
        (torch.tensor([0, 1]), TypeError, "floating-point"),
        (torch.tensor([0.0, 1.0, 0.5]), ValueError, "strictly increasing or strictly decreasing"),
        (torch.tensor([0.0, 0.0]), ValueError, "strictly increasing"),
        (torch.tensor([0.0, float("nan")]), ValueError, "finite"),
        (torch.tensor([0.0, float("inf")]), ValueError, "finite"),
    ],
)
def test_bad_t(t, error, match):
    with pytest.raises(error, match=match):
        mpnode.odeint(FIELD, Y0, t)


def test_t_on_another_device():
    with pytest.raises(ValueError, match=r"t is on meta but y0 is on cpu.*t.to\(y0.device\)"):
        mpnode.odeint(FIELD, Y0, torch.tensor([0.0, 1.0], device="meta"))


@pytest.mark.parametrize(
    "y0,error,match",
    [
        (torch.zeros(3, 2, dtype=torch.long), TypeError, "y0 must be a floating-point tensor"),
        (torch.tensor([[0.0, float("nan")]]), ValueError, "y0 contains NaN or infinite"),
        ([1.0, 2.0], TypeError, r"y0\[0\] must be a tensor"),
        ((torch.zeros(2), torch.zeros(2, dtype=torch.float64)), TypeError, "share one dtype"),
        ((), ValueError, "empty tuple"),
        ("state", TypeError, "y0 must be a tensor or a tuple"),
    ],
)
def test_bad_y0(y0, error, match):
    with pytest.raises(error, match=match):
        mpnode.odeint(lambda t, y: y, y0, T)


def test_func_output_shape():
    with pytest.raises(ValueError, match=r"func returned shape \(3, 1\) but the state has shape \(3, 2\)"):
        mpnode.odeint(lambda t, y: y[:, :1], Y0, T)


def test_func_tuple_output_shape():
    with pytest.raises(ValueError, match="state component 1"):
        mpnode.odeint(lambda t, s: (s[0], s[1][:1]), (torch.zeros(2), torch.zeros(3)), T)


def test_func_not_callable_and_bad_return():
    with pytest.raises(TypeError, match="func must be callable"):
        mpnode.odeint(3, Y0, T)
    with pytest.raises(TypeError, match="func must return a tensor"):
        mpnode.odeint(lambda t, y: 1.0, Y0, T)


def test_unknown_method_lists_known():
    with pytest.raises(ValueError, match=r"method='dopri5'.*euler, heun, midpoint, ralston, rk38, rk4"):
        mpnode.odeint(FIELD, Y0, T, method="dopri5")


@pytest.mark.parametrize("step_size", [0.0, -0.1, float("nan"), float("inf"), "0.1", True, torch.ones(2)])
def test_bad_step_size(step_size):
    with pytest.raises(ValueError, match=r"step_size"):
        mpnode.odeint(FIELD, Y0, T, options={"step_size": step_size})


def test_bad_options():
    with pytest.raises(ValueError, match=r"unknown keys \['atol'\]; accepted: \['step_size'\]"):
        mpnode.odeint(FIELD, Y0, T, options={"atol": 1e-3})
    with pytest.raises(TypeError, match="options must be a dict"):
        mpnode.odeint(FIELD, Y0, T, options=0.1)


def test_unknown_scaler():
    with pytest.raises(ValueError, match=r"scaler='static'.*'auto', 'none', 'dynamic'.*DynamicScaler"):
        mpnode.odeint(FIELD, Y0, T, scaler="static")


@pytest.mark.parametrize("kwargs,match", [({"target": 0.0}, "target"), ({"growth_interval": 0}, "growth_interval")])
def test_bad_dynamic_scaler_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mpnode.DynamicScaler(**kwargs)


def test_hidden_grad_tensor_in_closure_is_refused():
    """A closure over a tensor that requires grad would silently lose its gradient."""
    w = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match=r"1 tensor\(s\) that require grad.*params=\[\.\.\.\]"):
        mpnode.odeint(lambda t, y: y * w, Y0, T)
    mpnode.odeint(lambda t, y: y * w, Y0, T, params=[w])  # the fix works


def test_step_size_grid_hits_output_times_with_fp32_times():
    """1 / 127 splits [1, 0] into exactly 127 steps despite fp32 rounding of the times."""
    stats = mpnode.SolveStats()
    mpnode.odeint(FIELD, Y0, torch.tensor([1.0, 0.0]), options={"step_size": 1 / 127}, stats=stats)
    assert stats.n_steps == 127
    stats = mpnode.SolveStats()
    mpnode.odeint(FIELD, Y0, torch.tensor([0.0, 0.25, 1.0]), options={"step_size": 0.1}, stats=stats)
    assert stats.n_steps == 3 + 8
