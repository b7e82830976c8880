"""``phantom-sim`` end to end: files written, same seed same bytes, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sim import SweepError, load_scenario, sweep
from sim.cli import main

SMALL = """
name = "cli-small"
seed = 5
[users]
n_users = 80
n_calls = 8
call_s = 10.0
duration_s = 20.0
[adversary]
targets = 8
"""


@pytest.fixture
def scen(tmp_path: Path) -> Path:
    p = tmp_path / "small.toml"
    p.write_text(SMALL)
    return p


def test_run_writes_results_and_is_reproducible(scen: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["run", "--scenario", str(scen), "--out", str(a)]) == 0
    assert main(["run", "--scenario", str(scen), "--out", str(b)]) == 0
    for name in ("results.json", "late_loss.csv", "percentiles.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    for name in ("latency.png", "late_loss.png"):
        assert (a / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = json.loads((a / "results.json").read_text())
    assert res["scenario"] == "cli-small" and res["packets"] > 0
    c = tmp_path / "c"
    assert main(["run", "--scenario", str(scen), "--seed", "6", "--out", str(c)]) == 0
    assert (c / "results.json").read_bytes() != (a / "results.json").read_bytes()
    d = tmp_path / "d"
    assert (
        main(
            [
                "run",
                "--scenario",
                str(scen),
                "--set",
                "mixing.delay_mean_ms=5",
                "--set",
                "voice.frames_per_packet=2",
                "--out",
                str(d),
            ]
        )
        == 0
    )
    res_d = json.loads((d / "results.json").read_text())
    assert res_d["components_ms"]["packetization"] == 40.0
    assert res_d["components_ms"]["mixing"] < res["components_ms"]["mixing"] / 3


def test_attack_writes_both_designs(scen: Path, tmp_path: Path) -> None:
    out = tmp_path / "att"
    assert (
        main(
            [
                "attack",
                "--scenario",
                str(scen),
                "--out",
                str(out),
                "--attacks",
                "flow_correlation,intersection",
            ]
        )
        == 0
    )
    rep = json.loads((out / "attacks.json").read_text())
    assert set(rep["designs"]) == {"design", "baseline"}
    rows = (out / "attacks.csv").read_text().splitlines()
    assert rows[0].startswith("attack,design") and len(rows) == 5
    assert (out / "attacks.png").exists()


def test_sweep_in_worker_processes(scen: Path, tmp_path: Path) -> None:
    out = tmp_path / "sw"
    code = main(
        [
            "sweep",
            "--scenario",
            str(scen),
            "--out",
            str(out),
            "--workers",
            "2",
            "--delay-mean-ms",
            "5,60",
            "--hops",
            "5",
            "--frames-per-packet",
            "1,2",  # 3 frames x 2 copies at 24 kbit/s no longer fit VOICE's 352 bytes
        ]
    )
    assert code == 0
    rep = json.loads((out / "sweep.json").read_text())
    assert len(rep["points"]) == 4
    best = rep["recommended"]
    assert best["mouth_to_ear_p99_ms"] <= 600.0
    # 60 ms per hop cannot fit in 600 ms at p99; 5 ms per hop does.
    assert best["mixing.delay_mean_ms"] == 5.0
    assert (out / "sweep.png").exists()


def test_dask_path_without_dask_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real = builtins.__import__

    def no_dask(name: str, *args: object, **kw: object) -> object:
        if name.startswith("dask"):
            raise ImportError(name)
        return real(name, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_dask)
    sc = load_scenario({"users": {"n_calls": 1, "call_s": 2.0}})
    with pytest.raises(SweepError, match=r"phantom-mixnet\[cluster\]"):
        sweep(sc, {"mixing.delay_mean_ms": [5.0]}, dask_scheduler="tcp://127.0.0.1:1")


def test_bad_input_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[mixing]\ndelay_mean_ms = -3.0\n")
    with pytest.raises(SystemExit) as exc:
        main(["run", "--scenario", str(bad), "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert "mixing.delay_mean_ms" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sweep", "--scenario", str(bad), "--hops", "three"])
    assert "comma-separated integers" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["attack", "--scenario", str(bad)])
    capsys.readouterr()
    good = tmp_path / "good.toml"
    good.write_text(SMALL)
    with pytest.raises(SystemExit):
        main(["run", "--scenario", str(good), "--set", "mixing.path=sideways"])
    assert "mixing.path" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "--scenario", str(good), "--set", "novalue"])
    assert "FIELD=VALUE" in capsys.readouterr().err


def test_sweep_on_a_dask_cluster(scen: Path) -> None:
    """The same sweep through a real (local, loopback) Dask scheduler and worker."""
    distributed = pytest.importorskip("dask.distributed")
    sc = load_scenario(scen)
    grid = {"mixing.delay_mean_ms": [5.0, 60.0], "voice.frames_per_packet": [2]}
    with distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        protocol="tcp://",
        host="127.0.0.1",
        dashboard_address=None,
    ) as cluster:
        rep = sweep(sc, grid, dask_scheduler=cluster.scheduler_address)
    local = sweep(sc, grid, workers=1)
    assert rep.points == local.points  # same seed, same results, wherever they ran
    assert rep.recommended is not None
    assert rep.recommended["mixing.delay_mean_ms"] == 5.0


def test_unreachable_dask_scheduler(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("dask.distributed")
    import sim._sweep

    monkeypatch.setattr(sim._sweep, "DASK_CONNECT_TIMEOUT_S", 1)
    sc = load_scenario({"users": {"n_calls": 1, "call_s": 2.0}})
    with pytest.raises(SweepError, match="cannot reach"):
        sweep(sc, {"mixing.delay_mean_ms": [5.0]}, dask_scheduler="tcp://127.0.0.1:9")
