"""Mutating admission webhook over TLS (issue 4)."""
