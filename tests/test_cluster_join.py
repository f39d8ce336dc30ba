"""Joining a Ray cluster: a refused authentication token is named as such, in one line.

The fake exceptions carry the types and messages Ray 2.60 raised here when `ray start --head`
(token authentication on by default) was joined by a client without the token.
"""
from __future__ import annotations

import pytest

from onnxmbs.errors import MBSError
from onnxmbs.runtime import cluster

REFUSED = ("Failed to connect to GCS. Last connection error: Traceback (most recent call last):\n"
           '  File "python/ray/includes/common.pxi", line 119, in ray._raylet.check_status\n'
           "ray.exceptions.AuthenticationError: RPC error: InvalidAuthToken: Authentication token is missing "
           "or incorrect. Note: RAY_AUTH_MODE is currently 'disabled' (not 'token').\n")


def _raised(outer: BaseException, cause: BaseException | None) -> BaseException:
    try:
        try:
            if cause is not None:
                raise cause
        finally:
            raise outer from cause
    except BaseException as exc:  # noqa: BLE001 - the chain is what is tested
        return exc


def test_a_refused_token_is_named_with_how_to_share_it():
    exc = _raised(ConnectionError("Failed to connect to Ray cluster at 192.0.2.2:6391"), RuntimeError(REFUSED))
    error = cluster.join_error(exc, "127.0.0.1:6391")
    text = str(error)
    assert "\n" not in text
    assert "cluster at '127.0.0.1:6391' refused this client's authentication token" in text
    assert "ray get-auth-token" in text and "RAY_AUTH_TOKEN" in text and "RAY_AUTH_MODE=disabled" in text
    assert "ray start --head" not in text


def test_no_cluster_still_says_start_one():
    exc = _raised(ConnectionError("Could not find any running Ray instance. Please specify the one to connect to"),
                  None)
    assert not cluster.refused_token(exc)
    text = str(cluster.join_error(exc, "auto"))
    assert "cannot start or join Ray at 'auto'" in text and "ray start --head" in text


def test_connect_translates_the_refusal(monkeypatch):
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("a Ray is running in this process")

    def refuse(**_kwargs):
        raise ConnectionError("Failed to connect to Ray cluster at 192.0.2.2:6391") from RuntimeError(REFUSED)

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(cluster, "_reachable", lambda address: None)  # a head that answers, then refuses the token
    with pytest.raises(MBSError, match="refused this client's authentication token"):
        with cluster.connect("127.0.0.1:6391"):
            pass
