"""The run directory: file layout, checkpoints and resume, crash-safe writes, logs, progress, launch."""
