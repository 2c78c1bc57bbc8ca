"""Serve ``module:factory()`` with Werkzeug's threaded server, as ``flask run`` does."""

from __future__ import annotations

import importlib
import sys

from werkzeug.serving import run_simple


def load(spec: str):  # type: ignore[no-untyped-def]
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    if attr.endswith("()"):
        return getattr(module, attr[:-2])()
    return getattr(module, attr)


if __name__ == "__main__":
    run_simple("127.0.0.1", int(sys.argv[2]), load(sys.argv[1]), threaded=True, use_reloader=False)
