"""Curation: SFT and DPO rounds from logged runs with replay, training, and the adapter registry."""
