"""Perplexity, KL divergence against the base model, and sizes."""
