"""Reproducible recipes: the commands that train and evaluate the bundled models."""
