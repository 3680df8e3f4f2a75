"""Per-run figure: target samples, generated samples and learned density side by side."""
from __future__ import annotations

from pathlib import Path

import numpy as np

LIMIT = 4.0


def save_density_figure(path: Path, target: np.ndarray, generated: np.ndarray, density: np.ndarray,
                        bins: int, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on clusters
    import matplotlib.pyplot as plt

    extent = [[-LIMIT, LIMIT], [-LIMIT, LIMIT]]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    axes[0].hist2d(target[:, 0], target[:, 1], bins=bins, range=extent, cmap="viridis")
    axes[0].set_title("target samples")
    axes[1].hist2d(generated[:, 0], generated[:, 1], bins=bins, range=extent, cmap="viridis")
    axes[1].set_title("generated samples")
    axes[2].imshow(density, origin="lower", extent=[-LIMIT, LIMIT, -LIMIT, LIMIT], cmap="viridis")
    axes[2].set_title("learned density exp(-NLL)")
    for ax in axes:
        ax.set_xlim(-LIMIT, LIMIT)
        ax.set_ylim(-LIMIT, LIMIT)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
