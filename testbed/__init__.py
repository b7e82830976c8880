"""The test bed: a local testnet of real processes and what runs against it.

- ``testbed.testnet``: ``phantom-testnet`` (up, status, down, probe) and its library;
- ``testbed.loadgen``: a small mixnet client for tests and benchmarks (real topology, link);
- ``testbed.probe``: one-way latency of voice-like streams, for ``phantom-sim validate``;
- ``testbed.demo``: two callers, one call, and its measured report;
- ``testbed.report``: the report's E-model, simulator check and table;
- ``testbed.callcli``: ``phantom-call``, the caller's command line with ``demo``.

It may import every package of the project; none of them imports it (tests may). Inside,
imports go one way: ``_state`` <- ``loadgen`` <- ``probe`` <- ``testnet`` <- ``callcli``,
and ``demo`` <- ``report`` <- ``callcli``.
"""
