"""What machine and code produced a run (env.json)."""
from __future__ import annotations

import os
import platform
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from mpnode.profiling import device_name

REPO_ROOT = Path(__file__).resolve().parents[2]


def describe_environment(device: torch.device) -> dict[str, Any]:
    return {
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "threads": torch.get_num_threads(),
        "mpnode": _version("mpnode"),
        **git_state(),
    }


def device_slug(device: torch.device) -> str:
    """A file-name-safe device tag for result files: "cpu" or e.g. "cuda-nvidia-h200"."""
    if device.type != "cuda":
        return device.type
    return "cuda-" + re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-")


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    if commit is None:  # a copy of the tree without .git (e.g. shipped to a GPU machine)
        return {"git_commit": os.environ.get("MPNODE_GIT_COMMIT"), "git_dirty": os.environ.get("MPNODE_GIT_DIRTY")}
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


def _version(package: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(package)
    except Exception:  # not installed: the field says so
        return None
