"""The apps under test, each served by a real server in a subprocess."""
