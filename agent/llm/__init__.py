"""The model layer: per-stage model resolution, schema-enforced logged calls, and serving on vLLM."""
