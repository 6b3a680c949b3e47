"""Evaluation: attacks, robustness protocols, certification and the Markdown report."""
