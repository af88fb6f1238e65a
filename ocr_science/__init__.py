"""The science of the fire model: pure functions on NumPy arrays, no Dagster imports.

Each formula of docs/design.md §5 lives in one function here, tested beside it in ``tests/``.
"""
