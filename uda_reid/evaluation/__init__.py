"""Retrieval evaluation: Market-protocol mAP/CMC, model evaluation, re-ranking."""

from .ranking import EvaluationInputError, evaluate_ranking

__all__ = ["EvaluationInputError", "evaluate_ranking"]
