"""Plots handed data: training curves and tables, rollout heatmaps, the method's pictures."""
