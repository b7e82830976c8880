"""Phantom Net Mode C mix node, gateway and directory authority (trio edges around overlay).

Modules: ``config`` (TOML), ``keys`` (identity and epoch keys on disk), ``metrics``
(Prometheus, loopback only), ``dirauth`` and ``directory_client`` (topology documents),
``cli`` (``phantom-mixnode``).
"""
