"""Peak-memory meter and device-synchronized timer for CUDA and the CPU.

CUDA: the caching allocator's statistics (``max_memory_allocated``), cheap enough for
every iteration. CPU: the torch profiler's memory events (every allocation and free of
the CPU allocator, with its size), summed in time order to give the peak of live tensor
bytes. That costs profiling overhead, so measure selected iterations on the CPU.
Both report bytes *above the level at entry*: what the measured block added at its peak.
"""
from __future__ import annotations

import os
import platform
import time
from typing import Any

import torch

__all__ = ["PeakMemoryMeter", "DeviceTimer", "synchronize", "device_name", "describe_device"]


def _as_device(device: Any) -> torch.device:
    if isinstance(device, torch.Tensor):
        return device.device
    return torch.device(device if device is not None else "cpu")


def synchronize(device: Any = None) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    device = _as_device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemoryMeter:
    """``with PeakMemoryMeter(device) as m: ...`` then ``m.peak_bytes``.

    ``peak_bytes``: the largest number of bytes allocated at once inside the block, beyond
    what was allocated when it was entered. ``end_bytes``: what was still allocated (beyond
    the entry level) when it was left.
    """

    def __init__(self, device: Any = "cpu") -> None:
        self.device = _as_device(device)
        self.peak_bytes = 0
        self.end_bytes = 0
        self._profiler = None
        self._start = 0

    def __enter__(self) -> "PeakMemoryMeter":
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        elif self.device.type == "cpu":
            # A CUDA build of torch on a machine without a GPU makes the profiler log a
            # misleading "ERROR ... gpuGetDeviceCount failed" line at every start; kineto reads
            # this level when first used (a value the user set wins).
            os.environ.setdefault("KINETO_LOG_LEVEL", "5")
            from torch.profiler import ProfilerActivity, profile

            self._profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            self._profiler.__enter__()
        else:
            raise ValueError(f"PeakMemoryMeter supports 'cuda' and 'cpu' devices; got {self.device}")
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._start
            self.end_bytes = torch.cuda.memory_allocated(self.device) - self._start
            return
        profiler, self._profiler = self._profiler, None
        profiler.__exit__(*exc)
        results = profiler.profiler
        events = sorted(
            (e.start_ns(), e.nbytes())
            for e in results.kineto_results.events()
            if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
        )
        # Drop the recorded trace now: holding it (or letting a cycle hold it) costs hundreds
        # of MiB per measured training step.
        results.kineto_results = None
        results._function_events = None
        del results, profiler
        live = peak = 0
        for _, nbytes in events:
            live += nbytes
            peak = max(peak, live)
        self.peak_bytes, self.end_bytes = peak, live


class DeviceTimer:
    """``with DeviceTimer(device) as timer: ...`` then ``timer.seconds`` (device work included)."""

    def __init__(self, device: Any = "cpu") -> None:
        self.device = _as_device(device)
        self.seconds = 0.0
        self._t0 = 0.0

    def __enter__(self) -> "DeviceTimer":
        synchronize(self.device)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        synchronize(self.device)
        self.seconds = time.perf_counter() - self._t0


def device_name(device: Any = None) -> str:
    """The GPU's name, or the CPU's model name."""
    device = _as_device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or device.type


def describe_device(device: Any = None) -> str:
    """A human-readable device: the GPU's name, or the CPU's model and torch's thread count."""
    device = _as_device(device)
    if device.type == "cuda":
        return device_name(device)
    return f"{device_name(device)} ({torch.get_num_threads()} threads)"
