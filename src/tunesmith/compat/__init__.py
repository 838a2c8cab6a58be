"""The few library internals tunesmith still needs, one module per library.

Everything else uses the libraries' public APIs. Each module names the version it was written
against; tests/compat checks each internal still has the shape used here and fails with a
message naming it when a release changes it. Nothing here imports tunesmith, so any stage of
the pipeline may import it.
"""
