"""Bootstrapping: a decomp's commit history becomes teacher-labelled training pairs (mining.py picks the commits)."""
