"""Filters: score rows (`score`), then keep or drop them from the stored scores (`keep`, `split`)."""

from filters.dedup import ExactDedup, MinHashDedup
from filters.heuristics import Heuristics
from filters.judge import Judge

__all__ = ["ExactDedup", "MinHashDedup", "Heuristics", "Judge"]
