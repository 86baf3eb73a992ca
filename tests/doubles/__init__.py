"""Test doubles: in-process stand-ins for the adapters of the services, and a clock tests move.

Nothing outside tests/ imports these. Each double that stands in for a real adapter is held to the same
contract suite as the adapter (tests/service/test_*_contract.py), so a test cannot pass because the double
behaves differently from production.
"""
