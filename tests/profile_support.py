"""Helpers for the caller-profile tests: a signed network file, a profile made on it."""

from __future__ import annotations

from pathlib import Path

from directory_support import free_ports
from nacl.signing import SigningKey

from client.profile import Profile, create_profile
from overlay import VOICE, NetworkBundle, SignedNetwork, sign_network

PASSPHRASE = b"correct horse battery staple"


def network_file(urls: tuple[str, ...] | None = None, threshold: int = 2) -> bytes:
    """A network file signed by all of its (fresh) authorities; by default three on
    loopback ports where nothing listens."""
    urls = urls or tuple(f"http://127.0.0.1:{p}" for p in free_ports(3))
    seeds = [SigningKey.generate().encode() for _ in urls]
    bundle = NetworkBundle(
        authorities=urls,
        authority_keys=tuple(bytes(SigningKey(s).verify_key) for s in seeds),
        threshold=threshold,
        epoch_length_s=600,
        genesis_s=0,
        mix_layers=3,
        geometry="voice",
        geometry_digest=VOICE.digest,
    )
    data = bundle.to_bytes()
    return SignedNetwork(data, tuple(sign_network(data, s) for s in seeds)).to_bytes()


def make_profile(
    directory: Path, network: bytes, passphrase: bytes | None = PASSPHRASE, name: str = ""
) -> Profile:
    """A profile in ``directory`` on ``network`` with a made-up gateway id."""
    return create_profile(directory, network, bytes(range(16)), passphrase, name=name)
