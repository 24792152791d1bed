"""Prefect flows, thin over the library."""
