"""Evaluation of trained potentials: metrics (:mod:`nnpflow.evaluation.metrics`),
error tables and plots."""
