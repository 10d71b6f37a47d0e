"""The error tree: shape, pickling, and the messages users see."""

from __future__ import annotations

import pickle

import pytest

import minima_nb as mn


def test_tree_shape():
    """Each error sits where DESIGN.md draws it."""
    assert issubclass(mn.ConfigError, ValueError) and issubclass(mn.ConfigError, mn.MinimaError)
    assert issubclass(mn.ConnectError, mn.TransportError) and issubclass(mn.RequestTimeout, mn.TransportError)
    assert issubclass(mn.TransportError, mn.CallError)
    for cls in (mn.RateLimited, mn.ServerError, mn.ClientError):
        assert issubclass(cls, mn.StatusError)
    assert issubclass(mn.AuthError, mn.ClientError)
    assert issubclass(mn.ResponseError, mn.CallError) and issubclass(mn.BatchAborted, mn.MinimaError)


@pytest.mark.parametrize(
    "err",
    [
        mn.ConfigError("bad rpm"),
        mn.CacheError("locked"),
        mn.ServerError("HTTP 503", status=503, attempts=3),
        mn.RateLimited("slow down", retry_after=2.5, attempts=2),
        mn.RequestTimeout("too slow", attempts=6),
        mn.BatchAborted("too many failures", results=[None, 1]),
    ],
)
def test_errors_pickle_with_their_fields(err):
    """Errors survive pickling (Dask ships them between processes) with every field."""
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err) and str(back) == str(err)
    for field in ("status", "attempts", "retry_after", "results"):
        assert getattr(back, field, None) == getattr(err, field, None)
