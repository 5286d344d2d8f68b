"""The dossier of a 12-site appliance (the demo's size) in the namespace lab, rendered by
headless Chromium: a screenshot of the page, and the PDF Chromium prints, whose pages
poppler turns into PNG files; all kept in pytest's tmp_path for a person to look at."""

from __future__ import annotations

import os
import subprocess

import pytest

from netconfig.trip.config import AUTO
from tests.conftest import require_root, require_tool
from tests.lab.harness import Lab, require_engine
from tests.netns.appliance import Appliance

pytestmark = pytest.mark.netns

GROUP, PORT = "239.192.10.8", 30108
SITES = 12


def test_twelve_site_dossier_is_all_pass_and_renders(tmp_path) -> None:
    require_root()
    require_engine(AUTO)
    browser = require_tool("chromium", "chromium")
    # Sites on two relay endpoints each (no netd per site): 14 namespaces stay light on 2 cores.
    with Lab(
        n_sites=SITES,
        site_paths="endpoints",
        hold_time=1.0,
        probe_interval=0.2,
        probe_misses=5,
        trip_groups=[(GROUP, PORT)],
    ) as lab:
        app = Appliance(lab, GROUP, PORT, rate=10.0)
        app.start()
        code, doc, text = app.evidence()
        assert [s["verdict"] for s in doc["sections"]] == ["PASS"] * 4, text
        assert code == 0
        out = os.path.join(lab.workdir, "dossier")
        sites = doc["sections"][1]["facts"]["match"]["sites"]
        assert len(sites) == SITES and all(
            c["forwarded"] > 0 and c["commands_delivered"] > 0 for c in sites.values()
        ), sites
        forwarded = doc["sections"][2]["facts"]["forwarded"]
        assert forwarded["delay"]["unicast"]["count"] > 0 and forwarded["added_median_us"] is not None
        with open(os.path.join(out, "dossier.pdf"), "rb") as f:
            assert f.read(5) == b"%PDF-"
        html = open(os.path.join(out, "index.html")).read()
        assert all(f">site{i}<" in html for i in range(1, SITES + 1))
        # The page on screen, by headless Chromium (its first screenful: title, verdicts, topology).
        screen = tmp_path / "screen.png"
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--screenshot={screen}",
                "--window-size=1240,1754",
                f"file://{os.path.join(out, 'index.html')}",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        assert screen.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screen.stat().st_size > 50_000
        # The pages as printed: Chromium made the PDF, poppler draws its pages.
        pdftoppm = require_tool("pdftoppm", "poppler-utils")
        subprocess.run(
            [pdftoppm, "-png", "-r", "90", os.path.join(out, "dossier.pdf"), str(tmp_path / "page")],
            check=True,
            capture_output=True,
            timeout=120,
        )
        pages = sorted(tmp_path.glob("page-*.png"))
        assert len(pages) >= 4  # at least one per section
        assert all(png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for png in pages)
        assert pages[0].stat().st_size > 50_000  # the title page carries the drawing
        print(f"screenshots in {tmp_path}")
