"""cra: a staged coding agent for large legacy C codebases."""
