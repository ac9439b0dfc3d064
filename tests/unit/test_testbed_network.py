"""The testbed's port picking: ports a component binds a moment later must not be ones the kernel
hands to outgoing connections meanwhile (CI lost a whole cluster to that race)."""

from __future__ import annotations

import socket
from pathlib import Path

from localcluster.network import LOOPBACK, ephemeral_range, free_ports


def test_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    low, _ = ephemeral_range()
    ports = free_ports(50)
    assert len(set(ports)) == 50
    assert all(1024 < port < low for port in ports), ports
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, port))


def test_a_port_in_use_is_never_handed_out() -> None:
    # The narrowest window (20000-21999), one port of it held by a listener, and nearly every
    # port of it asked for: a picker that ignored the listener would hand that port out.
    narrow = (22000, 60999)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        [busy] = free_ports(1, ephemeral=narrow)
        held.bind((LOOPBACK, busy))
        held.listen()
        ports = free_ports(1900, ephemeral=narrow)
        assert busy not in ports
        assert len(set(ports)) == 1900
        assert all(20000 <= port < 22000 for port in ports)


def test_without_room_below_the_ephemeral_range_the_kernel_picks() -> None:
    ports = free_ports(3, ephemeral=(1024, 65535))
    assert len(set(ports)) == 3


def test_the_ephemeral_range_is_read_from_the_kernel_file(tmp_path: Path) -> None:
    range_file = tmp_path / "ip_local_port_range"
    range_file.write_text("40000\t50000\n")
    assert ephemeral_range(range_file) == (40000, 50000)
    assert ephemeral_range(tmp_path / "missing") == (32768, 60999)


def test_a_port_handed_out_lately_is_not_handed_out_again_before_it_is_bound() -> None:
    # Nothing binds these ports, so every probe finds them free: only memory keeps them apart.
    first = free_ports(300)
    second = free_ports(300)
    assert not set(first) & set(second)
