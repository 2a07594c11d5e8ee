"""Inference and evaluation: the Classifier, TTA, metrics, reports, submissions."""
