"""The fixtures are plugins (``tests/plugins/``, ``tests/browser_support.py``),
so a test module names what it uses and the fixtures live beside their helpers."""

pytest_plugins = (
    "tests.plugins.servers",
    "tests.plugins.redis_servers",
    "tests.browser_support",
)
