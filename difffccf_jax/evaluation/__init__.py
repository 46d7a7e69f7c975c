"""Scoring fused images: the field's metrics, the classical baselines and the comparison tables."""
