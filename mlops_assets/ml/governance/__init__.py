"""Governance without Dagster: lineage data, evaluation by slice, group fairness, calibration,
the report and its plots, the model card text and reproduction. The asset side
(mlops_assets/governance.py: logging, audit; mlops_assets/registry_commands.py: retirement and
the retire/reproduce commands; mlops_assets/code_versions.py) calls these."""
