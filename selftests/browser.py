"""The HTML report as a person sees it: rendered by headless Chromium, measured from the rendered page.

A copy of the report gets a script that, once pytest-html's own script has drawn the page, writes what the
checks need (where the verdict and the failing checks sit, the checks tables, every link and whether it is
shown) into the page as JSON; Chromium's ``--dump-dom`` hands the page back.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

WINDOW = (1400, 900)
PROBE = """<script>
window.addEventListener("load", () => setTimeout(() => {
  const box = e => { if (!e) return null; const r = e.getBoundingClientRect();
                     return {top: r.top + scrollY, bottom: r.bottom + scrollY, text: e.innerText}; };
  const shown = e => e.offsetParent !== null && e.getClientRects().length > 0;
  const cells = t => [...t.rows].map(r => [...r.cells].map(c => c.textContent));  // shown or collapsed
  const out = {
    verdict: box(document.getElementById("sglang-pd-verdict")),
    failing: box(document.getElementById("sglang-pd-failing")),
    provenance: box(document.getElementById("sglang-pd-provenance")),
    warnings: box(document.querySelector("details.warnings")),
    warnings_listed: [...document.querySelectorAll("ul.warnings li")].map(li => li.textContent),
    checks: [...document.querySelectorAll("table.checks")].filter(shown).map(t => t.innerText),
    trend: [...document.querySelectorAll("table.trend")].filter(shown).map(t => t.innerText),
    layout: [...document.querySelectorAll("table.layout")].map(cells),
    dp_load: [...document.querySelectorAll("table.dp-load")].map(cells),
    links: [...document.querySelectorAll("a[href]")].map(a => ({href: a.getAttribute("href"), text: a.innerText,
                                                                shown: shown(a)})),
  };
  const pre = document.createElement("pre"); pre.id = "sglang-pd-probe"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
}, 300));
</script>"""


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        raise RuntimeError("Chromium is not installed (scripts/setup --dev installs Debian's package chromium)")
    return found


def probe(report: Path, window: tuple[int, int] = WINDOW) -> dict:
    """What the rendered report shows: positions in CSS px from the top of the page, tables, links."""
    with tempfile.TemporaryDirectory() as profile:
        page = report.with_name(f".probe-{report.name}")  # beside the report: its relative links still resolve
        page.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
        try:
            dom = subprocess.run(
                [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}",
                 "--run-all-compositor-stages-before-draw", "--virtual-time-budget=10000", "--dump-dom",
                 page.as_uri()], capture_output=True, text=True, timeout=120, check=True).stdout
        finally:
            page.unlink()
    found = re.search(r'<pre id="sglang-pd-probe">(.*?)</pre>', dom, re.S)
    if not found:
        raise AssertionError(f"the probe did not run in Chromium; page starts: {dom[:500]}")
    return json.loads(html.unescape(found.group(1)))
