"""Thin wrapper so ``python -m benchmarks`` runs ``vqkit bench`` from a checkout."""
