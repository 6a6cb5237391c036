"""Faithful local stand-ins for the peers we cannot reach, for tests, benchmarks and the simulator.

Production code never imports this package.
"""
