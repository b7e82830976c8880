"""Node keys on disk: persistence, permissions, atomic writes, rotation with overlap."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mixnode.keys import (
    EPOCH_DIR,
    IDENTITY_FILE,
    KeyPermissionError,
    KeyStoreError,
    NodeKeys,
    create_identity_seed,
    load_identity_seed,
    write_secret_atomic,
)
from overlay import node_id_for, public_key


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_identity_survives_restart_with_same_node_id(tmp_path: Path) -> None:
    d = tmp_path / "node"
    first = NodeKeys.create(d)
    first.ensure_epochs(100)
    again = NodeKeys.load(d)
    assert again.node_id == first.node_id == node_id_for(first.identity_public)
    assert again.identity_seed == first.identity_seed
    assert again.epochs() == [100, 101]
    assert again.epoch_private(101) == first.epoch_private(101)
    assert again.epoch_public(100) == public_key(first.epoch_private(100))


def test_files_are_private(tmp_path: Path) -> None:
    old = os.umask(0)  # even a careless umask must not loosen key files
    try:
        keys = NodeKeys.create(tmp_path / "n")
        keys.ensure_epochs(3)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "n") == 0o700
    assert _mode(tmp_path / "n" / IDENTITY_FILE) == 0o600
    for f in (tmp_path / "n" / EPOCH_DIR).iterdir():
        assert _mode(f) == 0o600


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_refuses_group_or_world_readable_identity(tmp_path: Path, mode: int) -> None:
    NodeKeys.create(tmp_path / "n")
    os.chmod(tmp_path / "n" / IDENTITY_FILE, mode)
    with pytest.raises(KeyPermissionError, match="chmod 600"):
        NodeKeys.load(tmp_path / "n")


def test_refuses_readable_epoch_key(tmp_path: Path) -> None:
    NodeKeys.create(tmp_path / "n").ensure_epochs(7)
    os.chmod(tmp_path / "n" / EPOCH_DIR / "8.key", 0o644)
    with pytest.raises(KeyPermissionError, match="8.key"):
        NodeKeys.load(tmp_path / "n")


def test_missing_and_malformed_keys_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match="init"):
        NodeKeys.load(tmp_path / "nothing")
    NodeKeys.create(tmp_path / "n")
    with pytest.raises(KeyStoreError, match="already exists"):
        NodeKeys.create(tmp_path / "n")
    write_secret_atomic(tmp_path / "n" / IDENTITY_FILE, b"zz-not-hex\n")
    with pytest.raises(KeyStoreError, match="not a hex key"):
        NodeKeys.load(tmp_path / "n")
    write_secret_atomic(tmp_path / "n" / IDENTITY_FILE, b"abcd\n")
    with pytest.raises(KeyStoreError, match="expected 32 bytes"):
        NodeKeys.load(tmp_path / "n")


def test_atomic_write_leaves_no_temp_file_and_replaces(tmp_path: Path) -> None:
    p = tmp_path / "k"
    write_secret_atomic(p, b"one")
    write_secret_atomic(p, b"two")
    assert p.read_bytes() == b"two"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["k"]
    # A stale temp file from a crash is ignored when loading epoch keys.
    keys = NodeKeys.create(tmp_path / "n")
    (tmp_path / "n" / EPOCH_DIR / ".5.key.123.tmp").write_text("garbage")
    assert NodeKeys.load(tmp_path / "n").node_id == keys.node_id


def test_rotation_keeps_previous_epoch_and_deletes_older(tmp_path: Path) -> None:
    keys = NodeKeys.create(tmp_path / "n")
    for epoch in range(10, 14):
        keys.rotate(epoch)
    # At epoch 13: keep 12 (overlap), 13 (current) and 14 (ahead).
    assert keys.epochs() == [12, 13, 14]
    on_disk = sorted(int(f.stem) for f in (tmp_path / "n" / EPOCH_DIR).iterdir())
    assert on_disk == [12, 13, 14]
    with pytest.raises(KeyStoreError):
        keys.epoch_private(11)
    assert NodeKeys.load(tmp_path / "n").epochs() == [12, 13, 14]
    assert set(keys.public_epoch_keys([13, 14])) == {13, 14}


def test_bare_seed_file(tmp_path: Path) -> None:
    seed = create_identity_seed(tmp_path / "auth" / "authority.key")
    assert load_identity_seed(tmp_path / "auth" / "authority.key") == seed
    os.chmod(tmp_path / "auth" / "authority.key", 0o604)
    with pytest.raises(KeyPermissionError):
        load_identity_seed(tmp_path / "auth" / "authority.key")
