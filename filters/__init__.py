"""Filters: score rows (`score`), then keep or drop them from the stored scores (`keep`, `split`)."""

from filters.decontaminate import Decontaminate
from filters.dedup import ExactDedup, MinHashDedup
from filters.diversity import Diversity
from filters.fasttext_filter import FastTextClassifier, LanguageID
from filters.heuristics import Heuristics
from filters.ifd import IFD
from filters.judge import Judge
from filters.nuggets import Nuggets
from filters.perplexity import Perplexity

__all__ = ["Decontaminate", "Diversity", "ExactDedup", "FastTextClassifier", "Heuristics", "IFD", "Judge",
           "LanguageID", "MinHashDedup", "Nuggets", "Perplexity"]
