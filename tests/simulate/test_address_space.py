"""The simulator's address spaces: ``full`` draws each address of an org equally likely, ``sampled`` each of a few prefixes."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import numpy as np
import pytest

from distillguard.core.errors import DistillguardError
from distillguard.simulate import simulate
from distillguard.simulate.network import (
    CGNAT_PUBLIC_ADDRESSES,
    DEFAULT_ADDRESS_SPACE,
    RESIDENTIAL,
    Network,
)


def _repeats(addresses: np.ndarray) -> int:
    return len(addresses) - len(set(addresses.tolist()))


def test_full_space_draws_addresses_in_proportion_to_prefix_size() -> None:
    sampled = Network(np.random.default_rng(3), address_space="sampled").addresses(
        RESIDENTIAL, 50_000
    )
    full_net = Network(np.random.default_rng(3))
    full = full_net.addresses(RESIDENTIAL, 50_000)
    # 168 prefixes drawn alike, /24s among them: unrelated draws meet on one address.
    assert _repeats(sampled) > 100
    assert _repeats(full) < 20
    # Each address lies in one of the org prefixes it was drawn from, and the big ones get most.
    nets = [
        ipaddress.ip_network(p.cidr)
        for k in RESIDENTIAL
        for p in full_net.prefixes[k]
        if p.version == 4
    ]
    big = [n for n in nets if n.prefixlen <= 16]
    small = [n for n in nets if n.prefixlen >= 22]
    sample = [ipaddress.ip_address(a) for a in full[:400]]
    in_big = sum(any(a in n for n in big) for a in sample)
    in_small = sum(any(a in n for n in small) for a in sample)
    space_big = sum(n.num_addresses for n in big)
    space_small = sum(n.num_addresses for n in small)
    assert in_big > 0.5 * len(sample) and space_big > space_small
    assert in_small < 0.1 * len(sample)


def test_the_default_address_space_is_full_everywhere() -> None:
    import inspect

    from distillguard.cli import simulate as simulate_command

    assert DEFAULT_ADDRESS_SPACE == "full"
    assert Network(np.random.default_rng(1)).address_space == DEFAULT_ADDRESS_SPACE
    option = inspect.signature(simulate_command).parameters["address_space"]
    assert option.default == DEFAULT_ADDRESS_SPACE


def test_unknown_address_space_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DistillguardError, match="address space 'wide'"):
        simulate("default", "tiny", 1, tmp_path / "log", address_space="wide")


def test_full_space_puts_a_carriers_subscribers_behind_its_cgnat_addresses() -> None:
    net = Network(np.random.default_rng(5), address_space="full")
    phones = net.addresses(("tmobile",), 3 * CGNAT_PUBLIC_ADDRESSES)
    later = net.addresses(("tmobile",), 1000)
    assert len(set(phones.tolist())) <= CGNAT_PUBLIC_ADDRESSES
    # The same public addresses, drawn once: later subscribers land on them too.
    assert len(set(phones.tolist()) | set(later.tolist())) <= CGNAT_PUBLIC_ADDRESSES
    assert len(set(later.tolist()) & set(phones.tolist())) > 900
    homes = net.addresses(("comcast",), 3 * CGNAT_PUBLIC_ADDRESSES)
    assert _repeats(homes) < 0.01 * len(homes)
