"""phantom-testnet argument and state errors (no processes started, but in the last two)."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testbed import testnet
from testbed.testnet import (
    STATE_FILE,
    TestnetError,
    TestnetOptions,
    TestnetState,
    _alive,
    _plan,
    check_options,
    down,
    main,
    option_flag,
    up,
)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["up", "--gateways", "two"], "expected a whole number >= 0, got 'two'"),
        (["up", "--link-delay-ms", "inf"], "expected a finite number >= 0, got 'inf'"),
        (["down", "--timeout", "nan"], "expected a finite number >= 0, got 'nan'"),
    ],
)
def test_bad_number_says_what_is_wanted(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.fixture
def no_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Starting a process fails the test (should an option slip through, nothing starts)."""

    def spawn(args: list[str], log: Path) -> int:
        raise AssertionError(f"up started {args} instead of refusing")

    monkeypatch.setattr(testnet, "_spawn", spawn)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--layers", "4"], "--layers: expected a whole number in 1..3, got 4"),
        (["--per-layer", "0"], "--per-layer: expected a whole number in 1..26, got 0"),
        (["--link-loss", "1.5"], "--link-loss: expected a number in 0..0.99, got 1.5"),
        (["--threshold", "5"], "--threshold: expected a whole number in 1..3, got 5"),
        (["--threshold", "0"], "--threshold: expected a whole number in 1..3, got 0"),
        (["--authorities", "0", "--threshold", "0"], "--authorities: expected a whole number"),
        (["--base-port", "70000"], "--base-port: expected 0 (free ports) or a whole number in"),
        (["--base-port", "65530"], "or a whole number in 1..65509"),  # 27 ports from it
        (["--epoch-length-s", "5"], "--epoch-length-s: expected a whole number in 10..604800"),
        (["--workers", "0"], "--workers: expected a whole number in 1..64, got 0"),
        (["--cover-rate-hz", "1e9"], "--cover-rate-hz: expected a number in 0..1000"),
        (["--delivery-rate-hz", "0"], "--delivery-rate-hz: expected a number in 0.1..1000"),
        (["--link-delay-ms", "2e4"], "--link-delay-ms: expected a number in 0..10000, got 20000.0"),
        (["--gateways", "1000"], "--gateways: expected a whole number in 1..32, got 1000"),
    ],
)
@pytest.mark.usefixtures("no_processes")
def test_bad_options_refused_before_anything_is_written(
    tmp_path: Path, args: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression: `--base-port 70000` left keys and a testnet.json of bad ports behind."""
    assert main(["up", "--dir", str(tmp_path / "tn"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"phantom-testnet: {args[0]}: expected") and named in err
    assert list(tmp_path.iterdir()) == []  # not even the directory


_ANY_NUMBER = st.one_of(
    st.integers(-(2**40), 2**40), st.floats(allow_nan=True, allow_infinity=True)
)
_IN_RANGE = {  # option -> values that are all in its range
    "authorities": st.integers(1, 9),
    "threshold": st.integers(1, 9),  # brought within 1..authorities below
    "gateways": st.integers(1, 32),
    "layers": st.integers(1, 3),
    "per_layer": st.integers(1, 26),
    "base_port": st.sampled_from([0, 1, 1024, 32000, 65000]),
    "epoch_length_s": st.integers(10, 604800),
    "workers": st.integers(1, 64),
    "loop_cover_rate_hz": st.floats(0, 1000),
    "delivery_rate_hz": st.floats(0.1, 1000),
    "link_delay_ms": st.floats(0, 10_000),
    "link_jitter_ms": st.floats(0, 10_000),
    "link_loss": st.floats(0, 0.99),
    "round_interval_s": st.floats(0.1, 3600),
}


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    good=st.fixed_dictionaries(_IN_RANGE),
    broken=st.sampled_from([None, *_IN_RANGE]),
    value=_ANY_NUMBER,
)
def test_options_either_refused_by_name_or_every_config_builds(
    tmp_path: Path, good: dict[str, float], broken: str | None, value: float
) -> None:
    """check_options names the one option out of range; what it lets through, every config
    accepts (the plan builds and checks them all in memory); neither writes a file."""
    good["threshold"] = min(good["threshold"], good["authorities"])
    if broken is not None:
        good[broken] = value
    opts = TestnetOptions(directory=tmp_path / "tn", **good)  # type: ignore[arg-type]
    try:
        check_options(opts)
    except TestnetError as exc:
        assert broken is not None, exc
        assert (
            str(exc).startswith(f"{option_flag(broken)}: expected ")
            or (broken == "authorities" and str(exc).startswith("--threshold: expected "))
            or (broken in ("gateways", "per_layer") and str(exc).startswith("--base-port: "))
        )
        return
    if opts.base_port == 0:
        opts = dataclasses.replace(opts, base_port=32000 - opts.ports_needed())  # no sockets
    plan = _plan(opts, opts.directory)
    assert len(plan.nodes) == opts.gateways + opts.layers * opts.per_layer
    assert max(c.metrics.port for _, c in plan.nodes) < 65536
    assert not opts.directory.exists()


@pytest.mark.parametrize(
    ("content", "named"),
    [("{", "not JSON"), ("[]", "unexpected fields"), ('{"processes": [{"x": 1}]}', "unexpected")],
)
@pytest.mark.usefixtures("no_processes")
def test_a_damaged_state_file_is_named(
    tmp_path: Path, content: str, named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / STATE_FILE).write_text(content)
    for command in ("status", "down", "up"):
        assert main([command, "--dir", str(tmp_path)]) == 2
        assert f"{tmp_path / STATE_FILE}: not a testnet state file ({named}" in (
            capsys.readouterr().err
        )


def test_probe_refuses_an_unwritable_out_before_measuring(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    TestnetState(str(tmp_path), [], [], 1, "voice").save(tmp_path / STATE_FILE)
    args = ["probe", "--dir", str(tmp_path), "--out", "/proc/measured.json"]
    assert main(args) == 2
    assert "--out: /proc/measured.json: cannot create files in /proc" in capsys.readouterr().err


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
    from testbed.testnet import TestnetOptions, down, up

    first = up(TestnetOptions(directory=tmp_path, base_port=0, layers=1, per_layer=1))
    down(tmp_path)
    second = up(TestnetOptions(directory=tmp_path, base_port=0, layers=1, per_layer=1))
    try:
        assert {p.port for p in second.nodes()} != {p.port for p in first.nodes()}
    finally:
        down(tmp_path)
    assert not any(_alive(p.pid, p.config) for p in second.processes)


@pytest.mark.slow
def test_a_failed_start_stops_everything_and_leaves_no_state(tmp_path: Path) -> None:
    """A node that cannot bind its port exits; up stops the rest and removes testnet.json
    (keys, configs and logs stay for the next run and for reading)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held:
        held.bind(("127.0.0.1", 0))
        base = held.getsockname()[1] - 1  # the authority gets base, the gateway base + 1
        opts = TestnetOptions(
            directory=tmp_path, authorities=1, threshold=1, gateways=1, layers=1, per_layer=1,
            base_port=base,
        )  # fmt: skip
        with pytest.raises(TestnetError, match="gw-1 exited during start-up"):
            up(opts)
    assert not (tmp_path / STATE_FILE).exists()
    logs = {p.name for p in tmp_path.glob("*.log")}
    assert logs == {"auth-1.log", "gw-1.log", "mix-1a.log"}
    assert "node.listen_port" in (tmp_path / "gw-1.log").read_text()
    with pytest.raises(TestnetError, match="no testnet here"):
        down(tmp_path)
