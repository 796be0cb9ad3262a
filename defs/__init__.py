"""This repo's defs folder (a dg project: pyproject [tool.dg]): one folder per model, each with
a defs.yaml of type mlops_assets.TabularMLPipeline. definitions.py loads it."""
