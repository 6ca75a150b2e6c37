"""curate: the framework of the toolkit — records, I/O, steps, engine, LLM access, recipes, reports, CLI."""

__version__ = "0.1.0"
