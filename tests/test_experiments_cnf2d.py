"""The cnf2d task's pieces: seeded datasets, the exact trace, the NLL sign convention, MMD and
the solver dispatch."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from experiments.cnf2d.data import DATASETS, ToyData, sample
from experiments.cnf2d.metrics import mmd2_unbiased
from experiments.cnf2d.model import HyperNetField, log_normal, negative_log_likelihood
from experiments.common.integrate import Integrator, fixed_grid

CPU = torch.device("cpu")
FP32 = Integrator("mpnode", "rk4", "none")
METHOD_MAP = {"rk4": "rk4", "rk38": "rk4", "euler": "euler"}


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_datasets_are_seeded_2d_and_finite(name):
    a = sample(name, np.random.default_rng(1), 500)
    b = sample(name, np.random.default_rng(1), 500)
    c = sample(name, np.random.default_rng(2), 500)
    assert a.shape == (500, 2) and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.abs(a).max() < 8  # all live in the plotted window's neighbourhood


def test_two_spirals_odd_batch_and_unknown_name():
    assert sample("2spirals", np.random.default_rng(0), 7).shape == (7, 2)
    with pytest.raises(ValueError, match="task.dataset=nope"):
        sample("nope", np.random.default_rng(0), 3)


def test_data_module_streams_resume_exactly():
    data = ToyData("8gaussians", seed=42, device=CPU)
    data.train_batch(10)
    data.eval_batch(10)
    state = data.state_dict()
    expected = (data.train_batch(16), data.eval_batch(16), data.prior_samples(4))
    other = ToyData("8gaussians", seed=0, device=CPU)
    other.load_state_dict(state)
    for got, want in zip((other.train_batch(16), other.eval_batch(16), other.prior_samples(4)), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # Evaluation draws never move the training stream.
    fresh_a, fresh_b = ToyData("2spirals", 3, CPU), ToyData("2spirals", 3, CPU)
    fresh_b.eval_batch(100)
    torch.testing.assert_close(fresh_a.train_batch(8), fresh_b.train_batch(8), rtol=0, atol=0)


def test_hypernetwork_size_matches_reference():
    n = sum(p.numel() for p in HyperNetField(width=128).parameters())
    assert n == (1 * 32 + 32) + (32 * 32 + 32) + (32 * 7 * 128 + 7 * 128) == 30688


def test_closed_form_trace_equals_autograd_trace():
    torch.manual_seed(0)
    field = HyperNetField(width=16, init_scale=3.0).double()
    z = torch.randn(5, 2, dtype=torch.float64)
    t = torch.tensor(0.3, dtype=torch.float64)
    with torch.autocast("cpu", enabled=False):
        _, neg_trace = field(t, (z, None))
    for i in range(z.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda zi: field(t, (zi[None], None))[0][0], z[i])
        # float64 throughout: the closed form must equal autograd's trace to rounding.
        torch.testing.assert_close(-neg_trace[i], torch.trace(jac), rtol=1e-10, atol=1e-12)


def zero_field() -> HyperNetField:
    field = HyperNetField(width=8)
    with torch.no_grad():
        field.hyper[-1].weight.zero_()
        field.hyper[-1].bias.zero_()
    return field


def test_zero_vector_field_gives_the_prior_nll():
    x = torch.randn(64, 2)
    nll = negative_log_likelihood(zero_field(), x, FP32, n_grid=4)
    expected = 0.5 * (x * x).sum(1) + math.log(2 * math.pi)
    torch.testing.assert_close(nll, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(-log_normal(x), expected)


def test_learned_density_integrates_to_one():
    """Sign check: with a flow that really moves mass, exp(-NLL) must still integrate to 1 (a
    wrong sign on the trace term would make the integral exp(+-2*int trace) instead)."""
    torch.manual_seed(1)
    field = HyperNetField(width=32, init_scale=4.0)
    lim, n = 7.0, 141
    axis = torch.linspace(-lim, lim, n)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    points = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    with torch.no_grad():
        nll = negative_log_likelihood(field, points, FP32, n_grid=33)
    prior_nll = -log_normal(points)
    assert (nll - prior_nll).abs().max() > 0.3  # the flow is far from the identity
    cell = (2 * lim / (n - 1)) ** 2
    assert abs(torch.exp(-nll).sum().item() * cell - 1.0) < 0.02  # quadrature + discretization error


def test_mmd_is_near_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(0)
    a = torch.from_numpy(sample("8gaussians", rng, 600))
    b = torch.from_numpy(sample("8gaussians", rng, 600))
    c = torch.from_numpy(sample("2spirals", rng, 600))
    assert abs(mmd2_unbiased(a, b)) < 0.01
    assert mmd2_unbiased(a, c) > 0.05


def test_mmd_matches_the_unbiased_formula_term_by_term():
    x, y = torch.randn(6, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64) + 1

    def k(a, b):
        return math.exp(-float(((a - b) ** 2).sum()))

    xx = sum(k(x[i], x[j]) for i in range(6) for j in range(6) if i != j) / (6 * 5)
    yy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    xy = sum(k(x[i], y[j]) for i in range(6) for j in range(5)) / (6 * 5)
    assert mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-9, abs=1e-12)


def test_fixed_grid_hits_output_times_without_rounding_extra_steps():
    assert len(fixed_grid(torch.tensor([1.0, 0.0]), 1 / 127)) == 128
    grid = fixed_grid(torch.tensor([0.0, 0.5, 1.0]), 0.2)
    assert len(grid) == 7 and 0.5 in grid.tolist() and grid[-1] == 1.0


def test_torchdiffeq_baseline_matches_mpnode_on_the_same_scheme():
    torch.manual_seed(2)
    field = HyperNetField(width=16, init_scale=3.0)
    x = torch.randn(32, 2)
    with torch.no_grad():
        ours = negative_log_likelihood(field, x, Integrator("mpnode", "rk38", "none"), n_grid=9)
        theirs = negative_log_likelihood(field, x, Integrator("torchdiffeq", "rk38", "none", method_map=METHOD_MAP), n_grid=9)
    # Same scheme and grid in fp32: only summation order differs.
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert Integrator("torchdiffeq", "rk4", "none", method_map=METHOD_MAP).scheme == "rk38"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_nll_is_close_to_fp32_and_accumulates_in_fp32(dtype):
    torch.manual_seed(3)
    field = HyperNetField(width=32, init_scale=2.0)
    x = torch.randn(128, 2)
    with torch.no_grad():
        ref = negative_log_likelihood(field, x, FP32, n_grid=9)
        with torch.autocast("cpu", dtype=dtype):
            low = negative_log_likelihood(field, x, FP32, n_grid=9)
    assert low.dtype == torch.float32
    # bf16 keeps 8 bits: per-sample NLLs of size ~3 agree to a few 1e-2.
    assert (low - ref).abs().mean() < 0.05
