"""Generators: steps that make SFT rows with a teacher model."""

from synth.responses import Responses

__all__ = ["Responses"]
