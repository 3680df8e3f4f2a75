"""Shared test setup.

One intra-op thread: the tests use small tensors, for which OpenMP's thread team costs
far more than it gives, and on a busy 2-core machine (CI, parallel jobs) spinning threads
made single ops 20-200x slower in our measurements.
"""
import torch

torch.set_num_threads(1)
