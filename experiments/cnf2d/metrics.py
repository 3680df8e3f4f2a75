"""Sample-quality metrics."""
from __future__ import annotations

import torch


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased estimate of MMD^2 with the Gaussian kernel k(a, b) = exp(-|a - b|^2): the
    diagonal terms k(x_i, x_i) are left out of the within-sample means. Can be slightly negative."""
    x, y = x.double(), y.double()
    n, m = x.shape[0], y.shape[0]
    kxx = torch.exp(-torch.cdist(x, x).square())
    kyy = torch.exp(-torch.cdist(y, y).square())
    kxy = torch.exp(-torch.cdist(x, y).square())
    within_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    within_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(within_x + within_y - 2 * kxy.mean())
