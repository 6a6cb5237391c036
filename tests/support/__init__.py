"""What tests share besides fixtures: constants, stand-in wiring, servers, waits and probes.

`tests/conftest.py` holds the fixtures and imports from here; test modules import from here, never
from each other or from conftest.
"""
