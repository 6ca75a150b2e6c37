"""The run report: compute.py computes every number once into the dict report.json holds;
render.py writes report.md and report.html from it, card.py the dataset card (README.md);
validate.py checks the final data; plots.py draws the inline SVG charts."""
