"""Data for any study: sources, seeded splits, normalisation statistics."""
