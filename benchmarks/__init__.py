"""Benchmarks of flask-sse-broker against the alternatives; see README.md."""
