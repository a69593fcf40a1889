"""Everything that knows stock SGLang: its routes, bodies and metric names (``api.py``), the one
``/v1/loads`` parser (``loads.py``), the server's command line and environment (``launch.py``),
detection of a usable GPU host (``detect.py``) and the contract lists extracted from its wheels
(``contract/``)."""
