"""The ``stopdrift`` command: the CLI (``cli.py``), the demo that wires every part together
(``demo.py``) and the local servers it starts (``servers.py``: the embedded broker, MLflow,
Prometheus, Alertmanager). Everything else lives in the layer packages: ``producers``,
``stream_app``, ``drift``, ``training`` and the shared contracts in ``stopdrift_common``."""
