"""Generators: steps that make SFT rows with a teacher model."""

from synth.backtranslation import Backtranslation
from synth.best_of_n import BestOfN
from synth.cot import VerifiedCoT
from synth.evol_instruct import EvolInstruct
from synth.magpie import Magpie
from synth.responses import Responses
from synth.self_instruct import SelfInstruct

__all__ = ["Backtranslation", "BestOfN", "EvolInstruct", "Magpie", "Responses", "SelfInstruct", "VerifiedCoT"]
