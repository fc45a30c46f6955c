"""Render a report.html in headless Chromium and check that it displays.

    python experiments/check_report_browser.py runs/report/report.html [--png shot.png]

Two Chromium runs, both offline (no network, a throwaway profile):

1. ``--dump-dom``: the DOM after load must contain every section heading of the report
   (:data:`recsys.reports.render.SECTIONS`) and its images must be inline ``data:`` PNGs;
2. ``--screenshot`` at 1280x4000: the PNG must not be blank (enough non-white pixels, many
   distinct colours, content in the top part of the page, where the summary table is).

Exits 0 when both pass, 1 otherwise (the reason on stderr). Needs Debian's ``chromium``
(``apt-get install -y chromium``); the pytest test ``test_report_renders_in_headless_chromium``
(marked ``slow``) runs this and skips when ``/usr/bin/chromium`` is absent.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--mute-audio"]


def _chromium(binary: str, profile: str, extra: list[str], url: str, timeout: float) -> subprocess.CompletedProcess:
    cmd = [binary, *FLAGS, f"--user-data-dir={profile}", *extra, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def check_dom(dom: str) -> list[str]:
    """Problems with the rendered DOM (empty list when fine)."""
    from recsys.reports.render import SECTIONS

    problems = []
    for sid, title in SECTIONS.items():
        if not re.search(rf'<h2 id="{sid}">\s*{re.escape(title)}\s*</h2>', dom):
            problems.append(f"heading {title!r} (#{sid}) missing from the rendered page")
    srcs = re.findall(r'<img[^>]*\ssrc="([^"]*)"', dom)
    if not srcs:
        problems.append("no image in the rendered page")
    if any(not s.startswith("data:image/png;base64,") for s in srcs):
        problems.append("an image is not an inline data: PNG")
    return problems


def check_png(path: Path) -> tuple[list[str], dict]:
    """Problems with the screenshot (empty list when fine) and its statistics."""
    import matplotlib.image as mpimg

    img = mpimg.imread(path)[..., :3]  # float in [0, 1]
    h, w, _ = img.shape
    ink = (img < 0.93).any(axis=2)  # not (near) white
    q = (img * 255).astype(np.uint8).reshape(-1, 3)
    colours = len(np.unique(q[:: max(1, q.shape[0] // 200_000)], axis=0))
    stats = {"size": [w, h], "ink_fraction": float(ink.mean()), "ink_top_fraction": float(ink[: h // 8].mean()),
             "colours": colours, "std": float(img.std())}
    problems = []
    if stats["ink_fraction"] < 0.02:
        problems.append(f"the screenshot is (nearly) blank: {stats['ink_fraction']:.2%} non-white pixels")
    if stats["ink_top_fraction"] < 0.01:
        problems.append("nothing drawn in the top of the page")
    if colours < 50:
        problems.append(f"only {colours} distinct colours (no plots rendered?)")
    return problems, stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("html", type=Path)
    ap.add_argument("--png", type=Path, default=None, help="screenshot path (default: beside the HTML)")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--timeout", type=float, default=120)
    args = ap.parse_args(argv)
    html = args.html.resolve()
    if not html.is_file():
        print(f"check_report_browser: {html}: not found", file=sys.stderr)
        return 1
    if not Path(args.chromium).exists():
        print(f"check_report_browser: {args.chromium} not found (apt-get install -y chromium)", file=sys.stderr)
        return 1
    png = (args.png or html.with_name("report_screenshot.png")).resolve()
    url = html.as_uri()
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        dom = _chromium(args.chromium, profile, ["--dump-dom"], url, args.timeout)
        problems = check_dom(dom.stdout)
        if not dom.stdout.strip():
            problems.append(f"chromium printed no DOM (rc {dom.returncode}): {dom.stderr.strip()[-500:]}")
        shot = _chromium(args.chromium, profile, [f"--screenshot={png}", "--window-size=1280,4000"], url, args.timeout)
    if not png.is_file():
        problems.append(f"no screenshot written (rc {shot.returncode}): {shot.stderr.strip()[-500:]}")
        stats = {}
    else:
        more, stats = check_png(png)
        problems += more
    if problems:
        for p in problems:
            print(f"check_report_browser: {p}", file=sys.stderr)
        return 1
    print(f"check_report_browser: ok: {png} {stats}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
