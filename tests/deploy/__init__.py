"""Deployment tests: the gateway under a real Apache + mod_passenger on loopback, as cPanel runs it."""
