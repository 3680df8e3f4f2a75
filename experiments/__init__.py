"""Experiments of the mpnode project: a task-agnostic runner (``experiments.common``), the tasks
(``experiments.cnf2d``, later otflow and stl10) and the Hydra entry point ``experiments.run``."""
