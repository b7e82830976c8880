"""phantom-testnet argument and state errors (no processes started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mixnode.testnet import main


def test_bad_number_says_what_is_wanted(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["up", "--gateways", "two"])
    assert exc.value.code == 2
    assert "expected a whole number >= 0, got 'two'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [["--layers", "4"], ["--per-layer", "0"], ["--link-loss", "1.5"], ["--threshold", "5"]],
)
def test_bad_shape_refused_before_anything_starts(
    tmp_path: Path, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["up", "--dir", str(tmp_path / "tn"), *args]) == 2
    assert "phantom-testnet:" in capsys.readouterr().err
    assert not (tmp_path / "tn" / "testnet.json").exists()


def test_status_and_down_without_a_testnet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--dir", str(tmp_path)]) == 2
    assert main(["down", "--dir", str(tmp_path)]) == 2
    assert "no testnet here" in capsys.readouterr().err


@pytest.mark.slow
def test_up_again_in_the_same_directory_serves_the_new_addresses(tmp_path: Path) -> None:
    """Identities persist across runs but ports do not: the second `up` must not hand out
    the first run's addresses (it waits for every gateway to acknowledge an attach)."""
    from mixnode.testnet import TestnetOptions, _alive, down, up

    first = up(TestnetOptions(directory=tmp_path, base_port=0, layers=1, per_layer=1))
    down(tmp_path)
    second = up(TestnetOptions(directory=tmp_path, base_port=0, layers=1, per_layer=1))
    try:
        assert {p.port for p in second.nodes()} != {p.port for p in first.nodes()}
    finally:
        down(tmp_path)
    assert not any(_alive(p.pid, p.config) for p in second.processes)
