"""Not a test: measures what issue 12's closing note quotes, in a real Chromium.

For 8 tabs subscribed to one topic, with ``shared: true`` (one browser
context, so one SharedWorker) and without (8 contexts, a stream each): the
connections the server counts, and the time from just before the publish
request to the event in the last of the 8 tabs (browser ``Date.now()``, same
machine clock). 30 events per run, three runs side by side::

    PYTHONPATH=$PWD python -m tests.browser_measure
"""

from __future__ import annotations

import statistics
import time
import typing as t

from playwright.sync_api import sync_playwright

from tests.browser_support import CHROMIUM, CHROMIUM_ARGS, open_page
from tests.support import Server
from tests.test_browser import APP, CONFIG, ENV

TRACK = """(config) => {
    window.got = [];
    const client = sse.createSSEClient(config);
    client.on("*", (m) => got.push([m.data.t, Date.now()]));
    window.c = client.connect();
}"""


def run(browser: t.Any, srv: Server, shared: bool, events: int = 30) -> tuple[int, float, float]:
    contexts = [browser.new_context() for _ in range(1 if shared else 8)]
    try:
        pages = [open_page(contexts[i % len(contexts)].new_page(), srv.url("/page")) for i in range(8)]
        before = srv.state()["connections"]
        for page in pages:
            page.evaluate(TRACK, {"shared": shared, "topics": ["measure"]})
            page.wait_for_function("() => c.state === 'connected'")
        connections = srv.state()["connections"] - before
        latencies = []
        for k in range(events):
            sent = time.time() * 1000
            srv.publish("measure", {"t": sent, "k": k})
            for page in pages:
                page.wait_for_function("(n) => got.length >= n", arg=k + 1)
            latencies.append(max(page.evaluate("(k) => got[k][1]", k) for page in pages) - sent)
            time.sleep(0.05)
        return connections, statistics.median(latencies), sorted(latencies)[int(0.9 * events)]
    finally:
        for context in contexts:
            context.close()


def main() -> None:
    with Server("werkzeug", app=APP, config=CONFIG, env=ENV) as srv, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        for round_ in range(3):
            for shared in (True, False):
                connections, median, p90 = run(browser, srv, shared)
                print(
                    f"run {round_} shared={shared}: server connections={connections}, "
                    f"publish -> all 8 tabs median {median:.1f} ms, p90 {p90:.1f} ms"
                )
        browser.close()


if __name__ == "__main__":
    main()
