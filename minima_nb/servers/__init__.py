"""HTTP servers minima_nb ships (internal; public faces: ``minima_nb.testing``)."""
