"""Sphinx configuration. Build: ``sphinx-build -W --keep-going -b html docs docs/_build/html``.

autodoc imports the package that is installed (tox's docs env installs the
wheel), or the checkout when it is on ``PYTHONPATH``. No extension here needs
the network.
"""

from __future__ import annotations

import flask_sse_broker

project = "flask-sse-broker"
copyright = "2026 flask-sse-broker contributors"
author = "flask-sse-broker contributors"
release = flask_sse_broker.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
]
exclude_patterns = ["_build"]
default_role = "code"

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_preserve_defaults = True
autodoc_default_options = {"members": True}

html_theme = "furo"
html_title = f"flask-sse-broker {release}"
