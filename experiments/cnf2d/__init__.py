"""Continuous normalizing flow on FFJORD's 2D toy densities (paper section 1)."""
