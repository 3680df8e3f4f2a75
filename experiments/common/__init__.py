"""The task-agnostic experiment framework: configuration checks, precision policy, solver dispatch,
run directories, checkpoints, loggers and the training loop."""
