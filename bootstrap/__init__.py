"""Bootstrapping: a decomp's commit history becomes teacher-labelled training pairs for every stage."""
