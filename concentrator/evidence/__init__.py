"""`concentrator evidence`: the approval dossier of annex A40 section 5.10, from the appliance itself.

    concentrator evidence --config FILE --out DIR [--duration S] [--netd-state FILE] [--lab]
    concentrator evidence --recheck DIR

Run as root on the concentrator (in its network namespace). Without `--lab` it only
reads: the configuration, the kernel's tables, /proc, netd's state file, the relay's
metrics, and packets (AF_PACKET, not promiscuous). It writes DIR/index.html, DIR/dossier.pdf
when Chromium is installed, and the raw evidence beside them (pcap per interface,
evidence.json, matches.json, the configuration, SHA256SUMS). Exit status 0 when every
section is PASS, 1 otherwise, 2 for a bad configuration or a capture that cannot start.
See docs/evidence.md.
"""

from __future__ import annotations

import argparse
import os
import sys

from concentrator.configbase import ConfigError

from .appliance import Load


def main(argv: list[str], load_config: Load) -> int:
    """`load_config`: the configuration loader, handed over by the wiring layer (appliance.py)."""
    ap = argparse.ArgumentParser(prog="concentrator evidence", description=__doc__.splitlines()[0])
    ap.add_argument("--config", help="the appliance's YAML file")
    ap.add_argument("--out", help="directory for index.html, the PDF and the raw evidence")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of capture (default 60)")
    ap.add_argument("--netd-state", help="netd's --state file (switch history, active paths)")
    ap.add_argument(
        "--lab",
        action="store_true",
        help="also run the active proofs: SIGSTOP the relay, take each primary link down and up",
    )
    ap.add_argument(
        "--recheck",
        metavar="DIR",
        help="only redo section 2 from a dossier's pcap files and configuration, and compare",
    )
    args = ap.parse_args(argv)
    if args.recheck is not None:
        return _recheck(args.recheck, load_config)
    if args.config is None or args.out is None:
        ap.error("--config and --out are required (or --recheck DIR)")
    if args.duration <= 0:
        ap.error("--duration must be positive")
    from .capture import CaptureError
    from .dossier import build
    from .report import render, to_pdf

    try:
        dossier = build(load_config, args.config, args.out, args.duration, args.netd_state, args.lab)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except CaptureError as exc:
        print(f"evidence: {exc}", file=sys.stderr)
        return 2
    index = os.path.join(args.out, "index.html")
    with open(index, "w") as f:
        f.write(render(dossier))
    problem = to_pdf(index, os.path.join(args.out, "dossier.pdf"))
    for s in dossier.sections:
        print(f"{s.number}. {s.title}: {s.verdict}")
        for finding in s.findings[:10]:
            print(f"   {finding}")
    print(f"dossier: {index}" + (f" ({problem})" if problem else f" and {os.path.join(args.out, 'dossier.pdf')}"))
    print(
        f"run time {dossier.run_seconds:.1f} s (CPU {dossier.cpu_seconds:.1f} s) before the PDF, capture "
        f"{sum(dossier.sections[1].facts.get('pcap_bytes', {}).values())} bytes"
    )
    return 0 if all(s.passed for s in dossier.sections) else 1


def _recheck(out: str, load_config: Load) -> int:
    from .recheck import RecheckError, recheck

    try:
        same, result = recheck(out, load_config)
    except (RecheckError, ConfigError) as exc:
        print(f"recheck: {exc}", file=sys.stderr)
        return 2
    verdict = "PASS" if not result["exceptions"] else "FAIL"
    print(
        f"section 2 recomputed from {out}/capture: {verdict}, {result['up']} uplink ASDUs, "
        f"{result['bmi']} BMI ASDUs, {len(result['exceptions'])} exceptions"
    )
    print("the same as matches.json" if same else "DIFFERENT from matches.json: the files were changed")
    return 0 if same else 1
