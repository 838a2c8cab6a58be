"""Evaluation: identity hit rate and retention of general ability."""
