"""The eight 2D toy densities of FFJORD, written from their usual definitions, and a data module
whose random streams are numpy Generators it owns (never the global RNG), so batches are
reproducible per seed and resumable from a checkpoint.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import numpy as np
import torch

Sampler = Callable[[np.random.Generator, int], np.ndarray]


def _sklearn_seed(rng: np.random.Generator) -> int:
    # sklearn wants an int or RandomState; drawing it from our generator keeps the stream seeded.
    return int(rng.integers(0, 2**31 - 1))


def swissroll(rng: np.random.Generator, n: int) -> np.ndarray:
    from sklearn.datasets import make_swiss_roll

    x, _ = make_swiss_roll(n_samples=n, noise=1.0, random_state=_sklearn_seed(rng))
    return x[:, [0, 2]] / 5.0


def circles(rng: np.random.Generator, n: int) -> np.ndarray:
    from sklearn.datasets import make_circles

    x, _ = make_circles(n_samples=n, factor=0.5, noise=0.08, random_state=_sklearn_seed(rng))
    return x * 3.0


def moons(rng: np.random.Generator, n: int) -> np.ndarray:
    from sklearn.datasets import make_moons

    x, _ = make_moons(n_samples=n, noise=0.1, random_state=_sklearn_seed(rng))
    return x * 2.0 + np.array([-1.0, -0.2])


def rings(rng: np.random.Generator, n: int) -> np.ndarray:
    """Four concentric rings of radii 3, 2.25, 1.5, 0.75 with small Gaussian noise."""
    radii = np.array([1.0, 0.75, 0.5, 0.25]) * 3.0
    which = rng.integers(0, 4, size=n)
    angle = rng.uniform(0.0, 2 * math.pi, size=n)
    x = radii[which, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return x + rng.normal(scale=0.08, size=x.shape)


def eight_gaussians(rng: np.random.Generator, n: int) -> np.ndarray:
    """Mixture of 8 Gaussians (std 0.5) on a circle of radius 4, the whole scaled by 1/1.414."""
    angles = np.arange(8) * (2 * math.pi / 8)
    centers = 4.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    which = rng.integers(0, 8, size=n)
    x = centers[which] + 0.5 * rng.normal(size=(n, 2))
    return x / 1.414


def pinwheel(rng: np.random.Generator, n: int) -> np.ndarray:
    """Five arms: points stretched radially, then rotated by an angle growing along the arm."""
    arms, radial_std, tangential_std, rate = 5, 0.3, 0.1, 0.25
    base_angles = np.arange(arms) * (2 * math.pi / arms)
    features = rng.normal(size=(n, 2)) * np.array([radial_std, tangential_std])
    features[:, 0] += 1.0
    labels = rng.integers(0, arms, size=n)
    angle = base_angles[labels] + rate * np.exp(features[:, 0])
    c, s = np.cos(angle), np.sin(angle)
    rotated = np.stack([c * features[:, 0] - s * features[:, 1], s * features[:, 0] + c * features[:, 1]], axis=1)
    return 2.0 * rotated


def two_spirals(rng: np.random.Generator, n: int) -> np.ndarray:
    """Two interleaved Archimedean spirals (up to 540 degrees), point-mirrored, plus noise."""
    half = n // 2
    theta = np.sqrt(rng.uniform(size=half)) * 540.0 * (2 * math.pi / 360.0)
    arm = np.stack([-np.cos(theta) * theta, np.sin(theta) * theta], axis=1) + rng.uniform(size=(half, 2)) * 0.5
    x = np.concatenate([arm, -arm], axis=0) / 3.0
    x = x + rng.normal(size=x.shape) * 0.1
    if x.shape[0] < n:  # odd n: one more point from the first arm's distribution
        x = np.concatenate([x, two_spirals(rng, 2)[:1]], axis=0)
    return x


def checkerboard(rng: np.random.Generator, n: int) -> np.ndarray:
    """Uniform on the black squares of a 4x4 checkerboard covering [-4, 4]^2."""
    x1 = rng.uniform(size=n) * 4 - 2
    x2 = rng.uniform(size=n) - rng.integers(0, 2, size=n) * 2
    x2 = x2 + (np.floor(x1) % 2)
    return np.stack([x1, x2], axis=1) * 2.0


DATASETS: dict[str, Sampler] = {
    "checkerboard": checkerboard,
    "8gaussians": eight_gaussians,
    "2spirals": two_spirals,
    "swissroll": swissroll,
    "circles": circles,
    "moons": moons,
    "pinwheel": pinwheel,
    "rings": rings,
}


def sample(name: str, rng: np.random.Generator, n: int) -> np.ndarray:
    if name not in DATASETS:
        raise ValueError(f"task.dataset={name} is unknown; choose one of {', '.join(DATASETS)}")
    return DATASETS[name](rng, n).astype(np.float32)


class ToyData:
    """Independent streams for training batches and evaluation (validation batches, prior
    samples), so that evaluating more or less often never changes the training data."""

    def __init__(self, name: str, seed: int, device: torch.device):
        if name not in DATASETS:
            raise ValueError(f"task.dataset={name} is unknown; choose one of {', '.join(DATASETS)}")
        self.name = name
        self.device = device
        train_seq, eval_seq = np.random.SeedSequence(seed).spawn(2)
        self.train_rng = np.random.Generator(np.random.PCG64(train_seq))
        self.eval_rng = np.random.Generator(np.random.PCG64(eval_seq))

    def train_batch(self, n: int) -> torch.Tensor:
        return torch.from_numpy(sample(self.name, self.train_rng, n)).to(self.device)

    def eval_batch(self, n: int) -> torch.Tensor:
        return torch.from_numpy(sample(self.name, self.eval_rng, n)).to(self.device)

    def prior_samples(self, n: int) -> torch.Tensor:
        return torch.from_numpy(self.eval_rng.standard_normal((n, 2)).astype(np.float32)).to(self.device)

    def state_dict(self) -> dict[str, Any]:
        return {"train": self.train_rng.bit_generator.state, "eval": self.eval_rng.bit_generator.state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.train_rng.bit_generator.state = state["train"]
        self.eval_rng.bit_generator.state = state["eval"]
