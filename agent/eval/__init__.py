"""Measurements of the tool on real repositories: localization quality and speed."""
