"""The engine as a library: a pure core, the tariff book, the PostgreSQL stores, payments.

Dependencies point one way: ``stores`` and ``payments`` may use ``core`` and
``tariffbook``; ``tariffbook`` uses ``core``; ``core`` imports none of them and no I/O
library (the import contracts in ``pyproject.toml`` check it).
"""
