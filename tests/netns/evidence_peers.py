"""Peers for the evidence tests, run inside the lab's namespaces.

python -m tests.netns.evidence_peers bmi --target HOST:PORT --cas 101,102,65535,999 [--period 0.2]
    a BMI (our codec) that starts data transfer and sends an interrogation to each CA
    in turn, forever (commands for the selectivity check)
python -m tests.netns.evidence_peers relay --config FILE [--patch alter|misroute]
    the real relay (`concentrator relay`), optionally patched the way a faulty relay
    would be: `alter` flips one bit of the last octet of every 50th ASDU a site
    sends up; `misroute` also sends every BMI ASDU for the first site to the second
"""

from __future__ import annotations

import argparse
import sys
from functools import partial

import trio


def interrogation(ca: int) -> bytes:
    # C_IC_NA_1, one object, cause 6 (activation), originator 0, CA, IOA 0, QOI 20.
    return bytes((100, 1, 6, 0)) + ca.to_bytes(2, "little") + bytes((0, 0, 0, 20))


async def bmi(target: str, cas: list[int], period: float) -> None:
    from tests.peers.codec_peers import CodecMaster

    host, port = target.rsplit(":", 1)
    while True:
        master = CodecMaster()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(master.run, host, int(port)))
                await master.started.wait()
                print("bmi: started", flush=True)
                n = 0
                while True:
                    assert master.session is not None
                    if master.session.link.can_send:  # else the relay is not confirming: skip a turn
                        master.send(interrogation(cas[n % len(cas)]))
                        n += 1
                    await trio.sleep(period)
        except (OSError, trio.BrokenResourceError) as exc:
            print(f"bmi: {exc!r}", flush=True)
        await trio.sleep(0.2)


def patched_relay(config: str, patch: str | None) -> int:
    from concentrator.cli import main
    from concentrator.relay.core import RelayCore

    if patch == "alter":
        site_asdu = RelayCore._site_asdu
        seen = [0]

        def altered(self, conn, site, asdu, now):  # type: ignore[no-untyped-def]
            seen[0] += 1
            if seen[0] % 50 == 0:
                asdu = asdu[:-1] + bytes((asdu[-1] ^ 0x01,))
            site_asdu(self, conn, site, asdu, now)

        RelayCore._site_asdu = altered  # type: ignore[method-assign]
    elif patch == "misroute":
        bmi_asdu = RelayCore._bmi_asdu

        def misrouted(self, conn, asdu, now):  # type: ignore[no-untyped-def]
            bmi_asdu(self, conn, asdu, now)
            first, second = self.sites[0], self.sites[1]
            if conn is self.active and asdu[4] | asdu[5] << 8 in first.cas:
                self._send_down(second, asdu, now)

        RelayCore._bmi_asdu = misrouted  # type: ignore[method-assign]
    return main(["relay", "--config", config])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.netns.evidence_peers")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bmi")
    b.add_argument("--target", required=True)
    b.add_argument("--cas", required=True)
    b.add_argument("--period", type=float, default=0.2)
    r = sub.add_parser("relay")
    r.add_argument("--config", required=True)
    r.add_argument("--patch", choices=["alter", "misroute"])
    args = ap.parse_args(argv)
    if args.cmd == "relay":
        return patched_relay(args.config, args.patch)
    try:
        trio.run(bmi, args.target, [int(c) for c in args.cas.split(",")], args.period)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
