"""Evaluation: ground-truth labels + detect/replay outputs -> quality metrics and reports; traffic plots."""

from distillguard.evaluate.report import EvaluationReport
from distillguard.evaluate.run import evaluate_run, write_evaluation

__all__ = ["EvaluationReport", "evaluate_run", "write_evaluation"]
