"""The model servers a gRPC target names: what a label move asks, one by one."""

from __future__ import annotations

import pytest

from service.model_client.targets import server_addresses


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("ipv4:10.0.0.1:8500,10.0.0.2:8500", ["ipv4:10.0.0.1:8500", "ipv4:10.0.0.2:8500"]),
        ("ipv4:10.0.0.1:8500", ["ipv4:10.0.0.1:8500"]),
        ("ipv6:[::1]:8500,[fd00::2]:8500", ["ipv6:[::1]:8500", "ipv6:[fd00::2]:8500"]),
        ("unix:/run/tf-serving.sock", ["unix:/run/tf-serving.sock"]),
        ("127.0.0.1:8500", ["ipv4:127.0.0.1:8500"]),
        ("dns:///127.0.0.1:8500", ["ipv4:127.0.0.1:8500"]),
        # The authority names a DNS server to ask, not a model server.
        ("dns://10.9.9.9/127.0.0.1:8500", ["ipv4:127.0.0.1:8500"]),
        ("[::1]:8500", ["ipv6:[::1]:8500"]),
    ],
)
def test_listed_and_literal_addresses(target: str, expected: list[str]) -> None:
    assert server_addresses(target) == expected


def test_a_name_resolves_to_every_address_it_has() -> None:
    found = server_addresses("dns:///localhost:8500")
    assert "ipv4:127.0.0.1:8500" in found
    assert all(a.endswith(":8500") for a in found)
    assert found == sorted(set(found))


def test_a_name_without_a_port_gets_grpcs_default() -> None:
    assert server_addresses("127.0.0.1") == ["ipv4:127.0.0.1:443"]


@pytest.mark.parametrize(
    "target", ["dns:///no-such-host.invalid:8500", "tf-serving:notaport", "dns:///:8500"]
)
def test_what_cannot_be_resolved_is_left_to_the_channel(target: str) -> None:
    # The target's own calls then fail the way they always do (UNAVAILABLE).
    assert server_addresses(target) == [target]
