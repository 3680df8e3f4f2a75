"""The cnf2d task: data, model, loss, metrics and figures for the runner."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from experiments.common.precision import full_precision
from experiments.common.task import TaskContext

from .data import ToyData
from .figures import LIMIT, save_density_figure
from .metrics import mmd2_unbiased
from .model import HyperNetField, generate, negative_log_likelihood


class CNF2DTask:
    primary_metric = "val_nll_fp32"
    primary_mode = "min"

    def __init__(self, cfg: Mapping[str, Any], ctx: TaskContext):
        self.cfg = cfg
        self.ctx = ctx
        self.n_grid = int(cfg["n_grid"])
        if self.n_grid < 2:
            raise ValueError(f"task.n_grid={self.n_grid}: need at least 2 grid points (1 step)")
        self.data = ToyData(str(cfg["dataset"]), ctx.seed, ctx.device)

    def build_model(self) -> HyperNetField:
        model = HyperNetField(int(self.cfg["width"]), int(self.cfg["hyper_hidden"]), float(self.cfg["init_scale"]))
        return model.to(self.ctx.device)

    def next_batch(self) -> torch.Tensor:
        return self.data.train_batch(self.ctx.batch_size)

    def loss(self, model: HyperNetField, batch: torch.Tensor) -> torch.Tensor:
        return negative_log_likelihood(model, batch, self.ctx.integrator, self.n_grid).mean()

    def nll(self, model: HyperNetField, x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        return torch.cat([negative_log_likelihood(model, part, self.ctx.integrator, self.n_grid) for part in x.split(chunk)])

    def evaluate(self, model: HyperNetField) -> dict[str, float]:
        x = self.data.eval_batch(int(self.cfg["eval_batch_size"]))
        with self.ctx.precision.autocast():
            val_nll = self.nll(model, x).mean().item()
        with full_precision():
            val_nll_fp32 = self.nll(model, x).mean().item()
            n = int(self.cfg["mmd_samples"])
            generated = generate(model, self.data.prior_samples(n), self.ctx.integrator, self.n_grid)
            mmd = mmd2_unbiased(generated, self.data.eval_batch(n))
        return {"val_nll": val_nll, "val_nll_fp32": val_nll_fp32, "mmd": mmd}

    def density_on_grid(self, model: HyperNetField, points_per_axis: int) -> torch.Tensor:
        """exp(-NLL) on a points_per_axis^2 grid over [-4, 4]^2 (rows: y, columns: x), in fp32."""
        axis = torch.linspace(-LIMIT, LIMIT, points_per_axis, device=self.ctx.device)
        yy, xx = torch.meshgrid(axis, axis, indexing="ij")
        points = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)
        with full_precision():
            return torch.exp(-self.nll(model, points)).reshape(points_per_axis, points_per_axis)

    def figures(self, model: HyperNetField, directory: Path) -> list[Path]:
        n = int(self.cfg["figure_samples"])
        target = self.data.eval_batch(n).cpu().numpy()
        with full_precision():
            generated = torch.cat([
                generate(model, z, self.ctx.integrator, self.n_grid)
                for z in self.data.prior_samples(n).split(8192)
            ]).cpu().numpy()
        density = self.density_on_grid(model, int(self.cfg["density_grid"])).cpu().numpy()
        title = f"{self.cfg['dataset']}: {self.ctx.precision.name}, scaling {self.ctx.precision.scaling}, {self.ctx.integrator.solver}"
        path = save_density_figure(directory / "density.png", target, generated, density, int(self.cfg["figure_bins"]), title)
        return [path]

    def state_dict(self) -> dict[str, Any]:
        return {"data": self.data.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.data.load_state_dict(state["data"])
