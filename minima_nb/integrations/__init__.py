"""Edges: minima_nb meeting other systems (provider batch APIs, ...). Each is a leaf package."""
