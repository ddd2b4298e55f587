"""Moat inside other people's gateways, as their own plugin types (the `integrations` extra)."""
