"""Fixtures, loaded by ``tests/conftest.py`` as pytest plugins."""
