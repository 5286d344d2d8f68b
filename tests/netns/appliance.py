"""An appliance in the namespace lab for the evidence tests: the real relay (or a patched
one, tests/netns/evidence_peers.py), netd with its trip path, UPDC stations, a BMI sending
interrogations, trip datagrams; and `concentrator evidence` run in its namespace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import yaml

from tests.lab.harness import BMI_SERVICE, CONC_SERVICE, Iec104Stream, Lab, TripTraffic, run, wait_for

DURATION = 4.0
UNICAST = """
import itertools, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 0))
for i in itertools.count():
    s.sendto(b"unicast baseline %d" % i, (sys.argv[2], 30199))
    time.sleep(0.02)
"""


class Appliance:
    """The lab as an installed appliance: one configuration file for relay, netd's view
    and the evidence command (relay_config + netd's sections)."""

    def __init__(self, lab: Lab, group: str, port: int, patch: str | None = None, rate: float = 50.0) -> None:
        self.lab, self.group, self.patch, self.rate = lab, group, patch, rate
        self.config = os.path.join(lab.workdir, "concentrator.yaml")
        self.trips = TripTraffic(lab, group, port)

    def start(self) -> None:
        lab = self.lab
        doc = {**Iec104Stream(lab).relay_config(), **lab.netd_config("conc")}
        with open(self.config, "w") as f:
            yaml.safe_dump(doc, f)
        py = [sys.executable, "-m"]
        for i, site in enumerate(lab.sites, start=1):
            listen = "0.0.0.0" if lab.site_paths == "endpoints" else site.peer_service
            lab.spawn(
                site.peer,
                f"station-{site.name}",
                [
                    *py,
                    "tests.lab.harness_peers",
                    "station",
                    "--listen",
                    f"{listen}:2404",
                    "--ca",
                    str(100 + i),
                    "--rate",
                    str(self.rate),
                ],
            )
        for site in lab.sites:
            wait_for(lambda peer=site.peer: listening(lab, peer, 2404), 15, f"station {site.name}")
        relay = [*py, "tests.netns.evidence_peers", "relay", "--config", self.config]
        self.relay = lab.spawn("conc", "relay", relay + (["--patch", self.patch] if self.patch else []))
        wait_for(lambda: lab.assert_running() or listening(lab, "conc", 2404), 15, "relay listening")
        cas = ",".join([*(str(100 + i) for i in range(1, len(lab.sites) + 1)), "65535", "999"])
        lab.spawn(
            "bmi",
            "bmi",
            [
                *py,
                "tests.netns.evidence_peers",
                "bmi",
                "--target",
                f"{CONC_SERVICE}:2404",
                "--cas",
                cas,
                "--period",
                "0.1",
            ],
        )
        wait_for(lambda: lab.assert_running() or "bmi: started" in lab._log_tail("bmi")(), 15, "BMI started")
        self.trips.start()
        # The BMI reaches the sites' addresses through the concentrator, routed by its
        # kernel: the unicast baseline of the trips' added latency.
        site = lab.sites[0]
        self.unicast_target = site.peer_service if lab.site_paths == "netd" else site.primary.peer_ip
        lab.ip(
            "bmi", "route", "add", f"{self.unicast_target}/32", "via", lab.uplink.primary.conc_ip, "src", BMI_SERVICE
        )
        run(["ip", "netns", "exec", lab.ns("conc"), "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        wait_for(
            lambda: lab.netd_state().get("trip", {}).get("installed", {}).get(self.group) is True,
            10,
            "trip path installed",
        )
        time.sleep(1.0)  # every site started and flowing

    def evidence(self, *extra: str, duration: float = DURATION) -> tuple[int, dict[str, Any], str]:
        out = os.path.join(self.lab.workdir, "dossier")
        argv = [
            "ip",
            "netns",
            "exec",
            self.lab.ns("conc"),
            sys.executable,
            "-m",
            "concentrator",
            "evidence",
            "--config",
            self.config,
            "--out",
            out,
            "--duration",
            str(duration),
            "--netd-state",
            self.lab.state_file("conc"),
            *extra,
        ]
        # Trip datagrams (50/s) and unicast datagrams to a site (the baseline of the added
        # latency) from the BMI, without a pause, for as long as the capture runs.
        lab, py = self.lab, [sys.executable, "-m"]
        count = str(int((duration + 30) * 50))  # scapy builds them all before the first leaves
        senders = [
            lab.spawn(
                "bmi",
                "trip-sender",
                [
                    *py,
                    "tests.lab.trip_peers",
                    "send",
                    "--group",
                    self.group,
                    "--port",
                    str(self.trips.port),
                    "--src",
                    BMI_SERVICE,
                    "--iface",
                    lab.uplink.primary.peer_if,
                    "--count",
                    count,
                    "--interval",
                    "0.02",
                    "--out",
                    self.trips.sent_file,
                ],
            ),
            lab.spawn("bmi", "unicast-sender", [sys.executable, "-c", UNICAST, BMI_SERVICE, self.unicast_target]),
        ]
        wait_for(lambda: lab.assert_running() or os.path.exists(self.trips.sent_file), 30, "trips being sent")
        try:
            done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=240)
        finally:
            for sender in senders:
                lab.stop(sender)
        text = done.stdout
        assert os.path.exists(os.path.join(out, "evidence.json")), text
        with open(os.path.join(out, "evidence.json")) as f:
            return done.returncode, json.load(f), text


def listening(lab: Lab, role: str, port: int) -> bool:
    out = run(["ip", "netns", "exec", lab.ns(role), "ss", "-Hltn", f"sport = :{port}"], check=False).stdout
    return bool(out.strip())
