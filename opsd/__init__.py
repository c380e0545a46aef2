"""opsd: On-Policy Self-Distillation kit."""
