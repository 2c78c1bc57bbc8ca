"""Sphinx configuration. Build: ``sphinx-build -W --keep-going -b html docs docs/_build/html``.

autodoc imports the package that is installed (tox's docs env installs the
wheel), or the checkout when it is on ``PYTHONPATH``. No extension here needs
the network.
"""

from __future__ import annotations

import typing as t

from sphinx.util import logging

import flask_sse_broker

logger = logging.getLogger(__name__)

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


def _check_public_names(app: t.Any, env: t.Any) -> None:
    """Warn (an error under ``-W``) for a public name without an API entry."""
    documented = set(env.get_domain("py").objects)
    for name in flask_sse_broker.__all__:
        if f"flask_sse_broker.{name}" not in documented:
            logger.warning("flask_sse_broker.%s is public (__all__) but has no entry in docs/api.rst", name)


def setup(app: t.Any) -> None:
    app.connect("env-check-consistency", _check_public_names)
