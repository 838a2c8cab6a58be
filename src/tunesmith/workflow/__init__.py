"""End-to-end workflows built from the stages (identity: data, train, export, merge, eval)."""
