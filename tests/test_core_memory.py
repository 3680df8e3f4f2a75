"""Memory: low-precision checkpoints and the peak of forward plus backward (CPU meter)."""
import contextlib
import os

import pytest
import torch

import mpnode
from mpnode.profiling import DeviceTimer, PeakMemoryMeter

MiB = 2**20


def test_meter_counts_known_allocations():
    """Exact bytes: the CPU allocator reports each tensor's storage size, so the peak of
    1 MiB + 2 MiB live, then 2.5 MiB, is 3 MiB and 2.5 MiB remain at the end."""
    keep = torch.ones(1000)  # allocated before: not counted
    with PeakMemoryMeter("cpu") as meter:
        a = torch.empty(MiB, dtype=torch.uint8)
        b = torch.empty(2 * MiB, dtype=torch.uint8)
        del a
        c = torch.empty(MiB // 2, dtype=torch.uint8)
    assert meter.peak_bytes == 3 * MiB
    assert meter.end_bytes == 2 * MiB + MiB // 2
    del b, c, keep


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_meter_counts_known_allocations_cuda():
    with PeakMemoryMeter("cuda") as meter:
        a = torch.empty(4 * MiB, dtype=torch.uint8, device="cuda")
        b = torch.empty(8 * MiB, dtype=torch.uint8, device="cuda")
        del a
    assert meter.peak_bytes == 12 * MiB
    del b


def test_timer_measures_elapsed_time():
    import time

    with DeviceTimer("cpu") as timer:
        time.sleep(0.05)
    assert 0.04 < timer.seconds < 1.0


class Wide(torch.nn.Module):
    """State 64 x 1024 (256 KiB in fp32) through a narrow bottleneck: states dominate memory."""

    def __init__(self):
        super().__init__()
        self.down = torch.nn.Linear(1024, 16)
        self.up = torch.nn.Linear(16, 1024)

    def forward(self, t, y):
        return self.up(torch.tanh(self.down(y)))


def _run(dtype, steps=128, measure=True):
    torch.manual_seed(0)
    field = Wide()
    y0 = torch.randn(64, 1024, requires_grad=True)
    stats = mpnode.SolveStats()
    meter = PeakMemoryMeter("cpu")
    with meter if measure else contextlib.nullcontext():
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            sol = mpnode.odeint(field, y0, torch.tensor([0.0, 1.0]), options={"step_size": 1 / steps}, stats=stats)
        if measure:
            sol[-1].square().sum().backward()
    return stats, meter.peak_bytes


def test_bf16_checkpoints_halve_memory():
    """Checkpoint bytes are exactly half (one bf16 state per step instead of fp32), and the
    peak of forward + backward is <= 0.6x fp32: the checkpoints (32 MiB in fp32) dominate,
    the rest (outputs, one step's graph, parameter gradients) is ~15 states."""
    stats32, peak32 = _run(None)
    stats16, peak16 = _run(torch.bfloat16)
    state_bytes = 64 * 1024 * 4
    assert stats32.checkpoint_bytes == 128 * state_bytes
    assert stats16.checkpoint_bytes * 2 == stats32.checkpoint_bytes
    assert stats16.checkpoint_dtype == torch.bfloat16
    assert peak32 > stats32.checkpoint_bytes  # the meter sees the checkpoints
    assert peak16 <= 0.6 * peak32, (peak16 / MiB, peak32 / MiB)


def test_only_requested_outputs_are_kept_in_high_precision():
    """Two output times over 128 steps: outputs hold 2 states, not 129."""
    stats, _ = _run(torch.bfloat16, measure=False)
    assert stats.output_bytes == 2 * 64 * 1024 * 4
    assert stats.n_steps == 128 and stats.n_forward_evals == 4 * 128


def test_inference_keeps_no_checkpoints_and_computes_the_same():
    """Under torch.no_grad no backward can come: no checkpoints are stored, and the solution
    is bitwise the one of a differentiable solve (same arithmetic, same rounding)."""
    torch.manual_seed(0)
    field = Wide()
    y0 = torch.randn(8, 1024)
    t = torch.tensor([0.0, 1.0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            stats = mpnode.SolveStats()
            inference = mpnode.odeint(field, y0, t, options={"step_size": 0.1}, stats=stats)
        trained = mpnode.odeint(field, y0, t, options={"step_size": 0.1})
    assert stats.checkpoint_bytes == 0 and stats.n_steps == 10
    assert trained.requires_grad and torch.equal(inference, trained.detach())


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_cpu_meter_does_not_keep_its_traces():
    """Regression: the profiler trace behind the CPU meter was kept alive (a reference cycle
    the garbage collector does not hurry to free, since its bulk is C++ memory): a training
    run measuring every 10th iteration grew by ~160 MiB per measurement until it swapped.
    Tolerance: 4 measured blocks of 10k ops each may add at most 40 MiB in all (observed
    ~1 MiB with the fix; without it 8 blocks of 30k ops added 4.4 GiB)."""
    x = torch.ones(64)

    def workload():
        for _ in range(10000):
            x.add(1.0)

    with PeakMemoryMeter("cpu"):
        workload()  # first use: the profiler's one-off set-up
    before = _rss_bytes()
    for _ in range(4):
        with PeakMemoryMeter("cpu"):
            workload()
    assert _rss_bytes() - before < 40 * MiB, (_rss_bytes() - before) / MiB
