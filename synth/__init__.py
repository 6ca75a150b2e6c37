"""Generators: steps that make SFT rows with a teacher model."""

from synth.best_of_n import BestOfN
from synth.responses import Responses

__all__ = ["BestOfN", "Responses"]
