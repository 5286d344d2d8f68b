"""concentrator/ha/tcp.py: the kernel's TCP table as the supervisor reads it, and the bare
ACK it sends to make the BMI drop a dead connection (checked against scapy's encoder)."""

from __future__ import annotations

from pathlib import Path

from scapy.layers.inet import IP, TCP

from concentrator.ha.tcp import ESTABLISHED, LISTEN, bare_ack, tcp_table

PROC = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0A0200C0:0964 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000 100 0 0 10 0
   1: 0A0200C0:0964 010200C0:D431 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000 20 4 30 10 -1
"""


def test_tcp_table_reads_addresses_ports_and_states(tmp_path: Path) -> None:
    path = tmp_path / "tcp"
    path.write_text(PROC)
    assert tcp_table(str(path)) == [
        (("192.0.2.10", 2404), ("0.0.0.0", 0), LISTEN),
        (("192.0.2.10", 2404), ("192.0.2.1", 54321), ESTABLISHED),
    ]


def test_bare_ack_is_what_scapy_builds() -> None:
    ours = bare_ack(("192.0.2.10", 2404), ("192.0.2.1", 54321), seq=123456789, ack=987654321)
    theirs = bytes(
        IP(src="192.0.2.10", dst="192.0.2.1")
        / TCP(sport=2404, dport=54321, seq=123456789, ack=987654321, flags="A", window=1024)
    )[20:]
    assert ours == theirs
    broken = bare_ack(("192.0.2.11", 2404), ("192.0.2.1", 54321), seq=123456789, ack=987654321)
    assert broken[16:18] != theirs[16:18]  # the checksum covers the addresses
