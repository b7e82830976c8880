"""Config: TOML to frozen dataclasses; every bad field is named in the error."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import tomli_w
from hypothesis import assume, given
from hypothesis import strategies as st

from mixnode.config import (
    RANGES,
    ConfigError,
    DirAuthConfig,
    FieldRange,
    dirauth_config_to_dict,
    load_dirauth_config,
    load_node_config,
    make_node_config,
    node_config_to_dict,
    parse_dirauth_config,
    parse_node_config,
    url_problem,
    write_config,
)
from overlay import NodeRole
from tests.config_cases import base_tables

KEY_A = "aa" * 32
KEY_B = "bb" * 32

GOOD_GATEWAY = f"""
[node]
name = "gw-1"
role = "gateway"
listen_port = 31001
data_dir = "data/gw-1"

[gateway]
client_port = 31101
delivery_rate_hz = 50

[mixing]
loop_cover_rate_hz = 2.5
workers = 2

[directory]
authorities = ["http://127.0.0.1:31900", "http://127.0.0.1:31901/"]
authority_keys = ["{KEY_A}", "{KEY_B}"]
threshold = 2
epoch_length_s = 600

[metrics]
port = 9200

[link]
delay_ms_mean = 20
delay_ms_jitter = 5
loss = 0.01
"""


def test_good_gateway_config_and_defaults(tmp_path: Path) -> None:
    cfg = parse_node_config(GOOD_GATEWAY, base_dir=tmp_path)
    assert cfg.node.role is NodeRole.GATEWAY and cfg.node.layer == 0
    assert cfg.node.data_dir == tmp_path / "data" / "gw-1"
    assert cfg.node.public_host == "127.0.0.1"
    assert cfg.gateway is not None and cfg.gateway.client_port == 31101
    assert cfg.gateway.mailbox_capacity == 256  # default
    assert cfg.mixing.loop_cover_rate_hz == 2.5 and cfg.mixing.late_drop_ms == 50.0
    assert cfg.directory.authorities[1] == "http://127.0.0.1:31901"
    assert cfg.directory.authority_keys == (bytes.fromhex(KEY_A), bytes.fromhex(KEY_B))
    assert cfg.metrics.host == "127.0.0.1" and cfg.metrics.port == 9200
    assert cfg.link.loss == 0.01
    assert cfg.geometry.packet_len == 604
    with pytest.raises(AttributeError):
        cfg.node.name = "x"  # type: ignore[misc]


def _bad(text: str, replace: str, by: str) -> str:
    assert replace in text
    return text.replace(replace, by)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "loop_cover_rate_hz = 2.5",
            'loop_cover_rate_hz = "abc"',
            "mixing.loop_cover_rate_hz: expected a number in 0..1000, got 'abc'",
        ),
        (
            "loop_cover_rate_hz = 2.5",
            "loop_cover_rate_hz = -1",
            "mixing.loop_cover_rate_hz: expected a number in 0..1000",
        ),
        ('role = "gateway"', 'role = "relay"', "node.role: expected 'mix' or 'gateway'"),
        ("listen_port = 31001", "listen_port = 70000", "node.listen_port: expected an integer"),
        ("listen_port = 31001\n", "", "node.listen_port: missing"),
        ("client_port = 31101", "", "gateway.client_port: missing"),
        ("threshold = 2", "threshold = 3", "directory.threshold: expected an integer in 1..2"),
        (f'"{KEY_B}"', '"beef"', "directory.authority_keys[1]: expected a 32-byte"),
        (f'"{KEY_B}"', f'"{KEY_A}"', "directory.authority_keys: a key is listed twice"),
        ('"http://127.0.0.1:31900"', '"ftp://x"', "directory.authorities[0]: expected an http"),
        ("port = 9200", 'port = 9200\nhost = "0.0.0.0"', "metrics.host: expected a loopback"),
        ("loss = 0.01", "loss = 1.5", "link.loss: expected a number in 0..0.99"),
        ("workers = 2", "workers = true", "mixing.workers: expected an integer"),
        ("workers = 2", "wokers = 2", "mixing.wokers: unknown field"),
        ("[link]", "[lnk]", "lnk: unknown section"),
        ("epoch_length_s = 600", "epoch_length_s = 1", "directory.epoch_length_s"),
        ('name = "gw-1"', "name = 5", "node.name: expected a string, got 5"),
    ],
)
def test_bad_field_is_named(old: str, new: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_node_config(_bad(GOOD_GATEWAY, old, new))
    assert message in str(err.value)


def test_mix_needs_layer_and_no_gateway_section() -> None:
    mix = GOOD_GATEWAY.replace('role = "gateway"', 'role = "mix"\nlayer = 2')
    with pytest.raises(ConfigError, match=r"^gateway: only a node with role"):
        parse_node_config(mix)
    no_gw = mix.split("[gateway]")[0] + "[mixing]" + mix.split("[mixing]")[1]
    assert parse_node_config(no_gw).node.layer == 2
    with pytest.raises(ConfigError, match=r"node.layer: expected an integer in 1..3, got 4"):
        parse_node_config(no_gw.replace("layer = 2", "layer = 4"))
    with pytest.raises(ConfigError, match=r"node.layer: missing"):
        parse_node_config(no_gw.replace("layer = 2", ""))


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_node_config(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("[node\nname=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_node_config(tmp_path / "bad.toml")


def test_write_then_load_round_trip(tmp_path: Path) -> None:
    cfg = make_node_config(
        name="mix-1",
        role="mix",
        layer=3,
        listen_port=32003,
        data_dir=tmp_path / "mix-1",
        authorities=["http://127.0.0.1:31900"],
        authority_keys=[bytes.fromhex(KEY_A)],
        extra={"link": {"loss": 0.05}, "mixing": {"workers": 1}},
    )
    write_config(tmp_path / "mix-1.toml", cfg)
    assert load_node_config(tmp_path / "mix-1.toml") == cfg
    with pytest.raises(ConfigError, match="gateway.client_port: missing"):
        make_node_config(
            name="g",
            role="gateway",
            layer=0,
            listen_port=1,
            data_dir=tmp_path,
            authorities=["http://127.0.0.1:1"],
            authority_keys=[bytes(32)],
        )


def test_dirauth_config(tmp_path: Path) -> None:
    text = f"""
[authority]
name = "auth-1"
listen_port = 31900
data_dir = "auth-1"
round_interval_s = 0.5

[directory]
authorities = ["http://127.0.0.1:31900", "http://127.0.0.1:31901"]
authority_keys = ["{KEY_A}", "{KEY_B}"]
"""
    cfg = parse_dirauth_config(text, base_dir=tmp_path)
    assert isinstance(cfg, DirAuthConfig)
    assert cfg.directory.threshold == 2  # default: a majority
    assert cfg.authority.data_dir == tmp_path / "auth-1"
    write_config(tmp_path / "a.toml", cfg)
    assert load_dirauth_config(tmp_path / "a.toml") == cfg
    with pytest.raises(ConfigError, match="authority.listen_port: missing"):
        parse_dirauth_config(text.replace("listen_port = 31900", ""))


# --------------------------------------------------------------------------------------
# Ranges: a property over every numeric field

_BASES = {role: base_tables(role, Path("/srv/phantom")) for role in ("mix", "gateway", "authority")}
_BASES["mix"]["node"]["layer"] = 1  # valid for every mix_layers in range
_INT64 = (-(2**63), 2**63 - 1)


def _base_for(path: str) -> dict[str, dict[str, object]]:
    section = path.split(".")[0]
    return _BASES[section if section in ("gateway", "authority") else "mix"]


def _parse_with(path: str, value: object) -> None:
    section, key = path.split(".")
    tables = copy.deepcopy(_base_for(path))
    tables[section][key] = value
    text = tomli_w.dumps(tables)
    (parse_dirauth_config if section == "authority" else parse_node_config)(text)


def _outside(r: FieldRange) -> st.SearchStrategy[object]:
    ints = st.one_of(
        st.integers(_INT64[0], int(r.lo) - 1) if r.lo - 1 >= _INT64[0] else st.nothing(),
        st.integers(math.floor(r.hi) + 1, _INT64[1]),
    )
    if r.integer:
        return ints
    return st.one_of(
        ints,
        st.floats(max_value=r.lo, exclude_max=True),
        st.floats(min_value=r.hi, exclude_min=True),
        st.just(math.nan),
    )


def _inside(r: FieldRange) -> st.SearchStrategy[object]:
    ints = st.integers(math.ceil(r.lo), math.floor(r.hi))
    return ints if r.integer else st.one_of(ints, st.floats(r.lo, r.hi))


@pytest.mark.parametrize("path", sorted(RANGES))
@given(data=st.data())
def test_any_value_outside_a_range_names_the_field(path: str, data: st.DataObject) -> None:
    value = data.draw(_outside(RANGES[path]))
    with pytest.raises(ConfigError, match=rf"^{re.escape(path)}: expected an? (integer|number)"):
        _parse_with(path, value)


@pytest.mark.parametrize("path", sorted(RANGES))
@given(data=st.data())
def test_any_value_inside_a_range_is_accepted(path: str, data: st.DataObject) -> None:
    value = data.draw(_inside(RANGES[path]))
    assume(path != "gateway.client_port" or value != _BASES["gateway"]["node"]["listen_port"])
    _parse_with(path, value)


def test_every_rate_size_and_delay_is_bounded() -> None:
    """The issue's 1e300 Hz loop cover, and every field of its kind, has a finite ceiling."""
    assert all(math.isfinite(r.hi) and r.lo <= r.hi for r in RANGES.values())
    ceilings = {"Hz": 10_000, "packets": 10**7, "ms": 60_000}  # what one node can hold
    for path, r in RANGES.items():
        assert r.hi <= ceilings.get(r.unit, math.inf), path
    for path in RANGES:  # every range belongs to a real field
        section, key = path.split(".")
        assert key in _base_for(path)[section]
    with pytest.raises(ConfigError, match=r"^mixing.loop_cover_rate_hz: expected a number in"):
        _parse_with("mixing.loop_cover_rate_hz", 1e300)
    with pytest.raises(ConfigError, match=r"^directory.genesis_s: expected an integer in"):
        _parse_with("directory.genesis_s", 2**40)


def _guide_rows() -> dict[str, list[str]]:
    text = (Path(__file__).resolve().parents[1] / "docs" / "operators.md").read_text()
    section = text.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:-1] for line in section.splitlines() if line.startswith("| `")]
    return {cells[0].strip().strip("`"): [c.strip() for c in cells[1:]] for cells in rows}


def _shown(x: float) -> str:
    return str(int(x)) if x == int(x) else f"{x:g}"


def test_operators_guide_lists_every_field_with_its_unit_and_range() -> None:
    rows = _guide_rows()
    gateway = node_config_to_dict(parse_node_config(tomli_w.dumps(_BASES["gateway"])))
    authority = dirauth_config_to_dict(parse_dirauth_config(tomli_w.dumps(_BASES["authority"])))
    written = {
        f"{section}.{key}"
        for tables in (gateway, authority)
        for section, fields in tables.items()
        for key in fields  # type: ignore[attr-defined]
    }
    assert set(rows) == written  # every field the writer knows, and no other
    for path, r in RANGES.items():
        _, unit, allowed, _, _ = rows[path]
        assert unit == r.unit, path
        assert allowed.startswith(f"{_shown(r.lo)}..{_shown(r.hi)}"), path


@given(
    mix_layers=st.integers(1, 3),
    layer=st.integers(-(2**63), 2**63 - 1),
    keys=st.integers(1, 4),
    threshold=st.integers(-(2**63), 2**63 - 1),
)
def test_dependent_ranges_layer_and_threshold(
    mix_layers: int, layer: int, keys: int, threshold: int
) -> None:
    """node.layer lies in 1..directory.mix_layers, threshold in 1..len(authority_keys)."""
    tables = copy.deepcopy(_BASES["mix"])
    tables["directory"].update(
        mix_layers=mix_layers,
        authority_keys=[bytes([i + 1]).hex() * 32 for i in range(keys)],
        threshold=1,
    )
    tables["node"]["layer"] = layer
    if 1 <= layer <= mix_layers:
        assert parse_node_config(tomli_w.dumps(tables)).node.layer == layer
    else:
        with pytest.raises(ConfigError, match=r"^node\.layer: expected"):
            parse_node_config(tomli_w.dumps(tables))
    tables["node"]["layer"] = 1
    tables["directory"]["threshold"] = threshold
    if 1 <= threshold <= keys:
        assert parse_node_config(tomli_w.dumps(tables)).directory.threshold == threshold
    else:
        with pytest.raises(ConfigError, match=r"^directory\.threshold: expected an integer in"):
            parse_node_config(tomli_w.dumps(tables))


# --------------------------------------------------------------------------------------
# Hostile text: the loader raises ConfigError and nothing else, at a bounded cost

_GOOD_MIX = tomli_w.dumps(_BASES["mix"])
_PARSERS = (parse_node_config, parse_dirauth_config)


def _only_config_error(text: str) -> None:
    for parse in _PARSERS:
        try:
            parse(text)
        except ConfigError as exc:
            assert len(str(exc)) < 600  # quoted values are shortened
            assert str(exc).isprintable()  # control characters are escaped


# Pieces of TOML, so that random joins get past the first character more often.
_TOML_BITS = st.sampled_from(
    ["[", "]", "[[", "]]", "{", "}", "=", " = ", ",", ".", "\n", '"', "'", '"""', "\\u0000",
     "node", "directory", "authority", "name", "data_dir", "authorities", "listen_port",
     '"http://[::1]:1"', '"~nosuchuser/x"', "1", "-1", "1e999", "nan", "inf", "0x1f", "1" * 5000,
     "true", "1979-05-27", "#", "\r\n", "\x1b[31m", "é"]
)  # fmt: skip


@given(st.text(max_size=400))
def test_any_text_raises_only_config_error(text: str) -> None:
    _only_config_error(text)


@given(st.lists(_TOML_BITS, max_size=60).map("".join))
def test_any_toml_ish_text_raises_only_config_error(text: str) -> None:
    _only_config_error(text)


@given(
    cut=st.integers(0, len(_GOOD_MIX)),
    insert=st.lists(_TOML_BITS, max_size=8).map("".join),
)
def test_any_edit_of_a_good_config_raises_only_config_error(cut: int, insert: str) -> None:
    _only_config_error(_GOOD_MIX[:cut] + insert + _GOOD_MIX[cut:])


_GOOD_AUTHORITY = tomli_w.dumps(_BASES["authority"])
_HOSTILE_VALUES = st.one_of(
    st.sampled_from(
        [
            '"~nosuchuser/x"',
            '"~"',
            '"http://["',
            '"http://h:٥"',
            '"http://[::1]:1"',
            "1" * 5000,
            "-" + "9" * 4301,
            "1e999",
            "nan",
            "-inf",
            "0x" + "f" * 5000,
            '"' + "x" * 100_000 + '"',
            '"\u0000"',
            '"\u001b[2J"',
            '"/proc/x"',
            '"' + "a/" * 3000 + '"',
            "[" * 900 + "]" * 900,
            "{" + ",".join(f"k{i} = {i}" for i in range(2000)) + "}",
            "1979-05-27T07:32:00Z",
        ]
    ),  # fmt: skip
    st.integers().map(str),
    st.floats().map(lambda f: tomli_w.dumps({"v": f})[4:].strip()),
    st.text(max_size=80).map(lambda t: tomli_w.dumps({"v": t})[4:].strip()),
    st.lists(st.text(max_size=10), max_size=5).map(lambda v: tomli_w.dumps({"v": v})[4:].strip()),
)


@given(
    text=st.sampled_from([_GOOD_MIX, _GOOD_AUTHORITY]),
    line=st.integers(0, 40),
    value=_HOSTILE_VALUES,
)
def test_any_value_of_any_field_raises_only_config_error(text: str, line: int, value: str) -> None:
    """Each field in turn takes a hostile value: huge integers, ~user paths, bad URLs..."""
    fields = [i for i, ln in enumerate(text.splitlines()) if " = " in ln]
    lines = text.splitlines()
    at = fields[line % len(fields)]
    lines[at] = lines[at].split(" = ", 1)[0] + " = " + value
    _only_config_error("\n".join(lines))


@given(
    depth=st.integers(1, 6000),
    opener=st.sampled_from([("[", "]"), ("{a=", "}"), ("[{a=", "}]")]),
    where=st.sampled_from(["x = {}", "[node]\nname = {}", "[directory]\nauthorities = {}"]),
)
def test_any_nesting_depth_raises_only_config_error(
    depth: int, opener: tuple[str, str], where: str
) -> None:
    value = opener[0] * depth + "1" + opener[1] * depth
    _only_config_error(where.format(value))


def test_the_reviews_hostile_configs_name_the_problem(tmp_path: Path) -> None:
    """Regression: 5,000 levels of `[`, a 5,000-digit integer, ~user, an escape-laden key."""
    cases = {
        "x = " + "[" * 5000 + "]" * 5000: "not valid TOML: nested too deeply",
        "x = " + "1" * 5000: "not valid TOML: Exceeds the limit",
        "a." * 3000 + "a = 1": "node: missing (required)",  # deep, and no repr of it
        _GOOD_MIX.replace('data_dir = "/srv/phantom/data"', 'data_dir = "~nosuchuser/x"'): (
            "node.data_dir: cannot expand ~ in '~nosuchuser/x'"
        ),
        _GOOD_MIX.replace("[node]\n", '[node]\n"\\u001b[2J" = 1\n'): r"node.'\x1b[2J': unknown",
        _GOOD_MIX.replace('name = "node-1"', f'name = "{"n" * 10_000}"'): "...",
        _GOOD_MIX.replace("layer = 1", "layer = 0x" + "f" * 5000): "got <20000-bit integer>",
        _GOOD_MIX.replace("layer = 1", "layer = [[0x" + "f" * 5000 + "]]"): "got [[<20000-bit",
    }
    for text, message in cases.items():
        with pytest.raises(ConfigError) as err:
            parse_node_config(text)
        assert message in str(err.value) and len(str(err.value)) < 300
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * (1024 * 1024) + "\n")
    with pytest.raises(ConfigError, match="larger than 1048576 bytes"):
        load_node_config(big)


@pytest.mark.parametrize(
    ("where", "message"),
    [
        (".", "Is a directory"),
        ("latin1.toml", "not UTF-8"),
        ("loop.toml", "Too many levels of symbolic links"),
    ],
)  # /dev/zero and a FIFO (reading would never end) are run as commands, with limits
def test_a_config_path_that_is_no_config_file_is_refused_at_once(
    tmp_path: Path, where: str, message: str
) -> None:
    (tmp_path / "latin1.toml").write_bytes(b'[node]\nname = "caf\xe9"\n')
    (tmp_path / "loop.toml").symlink_to(tmp_path / "loop.toml")
    path = tmp_path / where
    for load in (load_node_config, load_dirauth_config):
        with pytest.raises(ConfigError, match=message):
            load(path)


# --------------------------------------------------------------------------------------
# Authority URLs


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://[::1]:31900", "IPv6 is not supported"),
        ("http://127.0.0.1:0", "a port in 1..65535"),
        ("http://127.0.0.1:99999", "a port in 1..65535"),
        ("http://127.0.0.1\r\n:31900", "without white space"),  # urlsplit would drop the CR LF
        ("http://127.0.0.1:31900/\r\nX-Injected: 1", "without white space"),
        ("http://127.0.0.1\x00:31900", "without white space"),
        ("http://127.0.0.1 :31900", "without white space"),
        ("http://user:pw@127.0.0.1:31900", "no query or user info"),
        ("http://127.0.0.1:31900/?x=1", "query"),
        ("http://127.0.0.1:31900/#top", "query"),
        ("http://127.0.0.1:", "query"),
        ("http://", "query"),
        ("http://[", "IPv6"),
        ("HTTP://127.0.0.1", "an http:// or https:// URL"),
        ("ftp://127.0.0.1", "an http:// or https:// URL"),
        ("http://999.1.1.1:80", "whose host is a valid IPv4 address"),
        ("http://-x.example:80", "whose host is a host name"),
    ],
)
def test_authority_urls_that_would_only_fail_at_run_time_are_refused(
    url: str, message: str
) -> None:
    text = _GOOD_MIX.replace('"http://127.0.0.1:9"', tomli_w.dumps({"u": url})[4:].strip())
    with pytest.raises(ConfigError, match=r"^directory\.authorities\[0\]: expected ") as err:
        parse_node_config(text)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:31900", "https://dir1.example.net", "http://localhost:1/phantom/",
     "https://dir.example.net:65535/a/b"],
)  # fmt: skip
def test_authority_urls_accepted(url: str) -> None:
    assert url_problem(url) is None


@given(st.text(max_size=60) | st.from_regex(r"\Ahttps?://[ -~]{0,40}\Z"))
def test_any_url_is_checked_without_raising_and_accepted_ones_are_sound(url: str) -> None:
    if url_problem(url) is not None:
        return
    parts = urlsplit(url)
    assert url.isascii() and url.isprintable() and " " not in url
    assert parts.scheme in ("http", "https") and parts.hostname and not parts.username
    assert not parts.query and not parts.fragment and ":" not in parts.hostname
    assert parts.port is None or 1 <= parts.port <= 65535


@pytest.mark.parametrize("host", ["224.0.0.1", "0.1.2.3", "255.255.255.255", "a.0x4", "a.1x"])
def test_public_host_must_pass_the_directorys_own_check(tmp_path: Path, host: str) -> None:
    """A published address the authorities would refuse is a config error, not a run-time one."""
    text = GOOD_GATEWAY.replace('[node]\n', f'[node]\npublic_host = "{host}"\n', 1)
    with pytest.raises(ConfigError, match=r"node\.public_host: expected an address the directory"):
        parse_node_config(text, base_dir=tmp_path)
