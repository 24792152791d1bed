"""The decomp-aware code index: parsing, symbols, graphs, search tables and incremental updates."""
