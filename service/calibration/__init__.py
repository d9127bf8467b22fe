"""Threshold calibration on an enrolled gallery: impostor scores, thresholds, their uncertainty."""
