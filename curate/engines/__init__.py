"""Engines besides the local one (curate.engine): each runs a recipe's steps elsewhere, with the
local engine's parts, markers, outputs and report. `ray` (curate.engines.ray) is the only one."""
