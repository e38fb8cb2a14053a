"""The run's lifecycle: checkpoints, the run directory, signals and preemption, preflight checks, the run log,
TensorBoard, metrics, plots, the step guard, collapse watching and the schedules (docs/architecture.md)."""
