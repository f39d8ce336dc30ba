"""Ray, when installed (``pip install 'onnxmbs[ray]'``): start or join a cluster, run many tasks with
retries, and get their results back in submission order under one progress bar.

Nothing here knows what a task does: the statistics pass (:mod:`onnxmbs.stats.sharding`) runs one
shard of the calibration data per task, and any later stage can run its own tasks the same way::

    with connect(address, workers=4):
        for result in run_ordered(fn, calls, shared=big_object, window=8):
            ...  # fn(shared, *calls[0]), fn(shared, *calls[1]), ... in that order

A task whose worker process dies is re-run by Ray (``retries`` times); each call's result is
yielded exactly once, so adding results up never counts a re-run twice. Closing the generator
early (``break``) cancels the tasks not yet finished.

A stage that keeps state between rounds (the reconstruction keeps each shard's targets between
its waves) uses :func:`actors` instead: one Ray actor per share, made as ``cls(shared, *args)``;
an actor whose process dies is made again from the same arguments and its pending call re-run,
so the class must be able to catch up from what each call passes.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from onnxmbs.errors import MBSError
from onnxmbs.progress import progress_bar

logger = logging.getLogger(__name__)

EXTRA = "pip install 'onnxmbs[ray]'"


def require_ray(what: str = "--workers") -> Any:
    """The ``ray`` module, or a clean error naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise MBSError(f"{what} needs Ray, which is not installed — install it with {EXTRA}") from None
    return ray


@contextlib.contextmanager
def connect(address: str | None = None, *, workers: int | None = None) -> Iterator[Any]:
    """Ray, initialised: join ``address`` (``auto`` = the cluster started on this machine with
    ``ray start``, or ``HOST:PORT`` of its head), else start a local Ray with ``workers`` CPUs.
    Shuts down only a Ray it started; an already initialised Ray is used as it is."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    options: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    quiet_token_warnings()
    if address and address != "auto":
        _reachable(address)
    try:
        if address:
            with _native_stderr_to_debug():  # 20 C++ "Failed to get cluster ID ... InvalidAuthToken" lines
                ray.init(address=address, **options)
        else:
            ray.init(num_cpus=workers, **options)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise join_error(exc, address) from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _reachable(address: str, *, timeout: float = 5.0) -> None:
    """A HOST:PORT nothing answers on is one line (``ray.init`` would retry silently for minutes)."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # not HOST:PORT: let Ray say what it makes of it
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise MBSError(f"no Ray cluster answers at {address!r} ({exc.strerror or exc}) — start it with "
                       "`ray start --head` on that machine, check the address, or leave out --ray-address for a "
                       "local Ray") from None


#: Ray's logger for its token-authentication notices, and the notices onnxmbs does not pass on
TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"
TOKEN_NOTICES = ("Token authentication is enabled for this Ray cluster",
                 "Token authentication is disabled for this Ray cluster")


class _TokenNoticeFilter(logging.Filter):
    """Drops Ray's "Token authentication is enabled/disabled" warnings (logged at debug by onnxmbs instead)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if text.startswith(TOKEN_NOTICES):
            logger.debug("Ray: %s", text)
            return False
        return True


def quiet_token_warnings() -> None:
    """Keep Ray's token-authentication warnings off stderr; every other Ray message still shows."""
    ray_logger = logging.getLogger(TOKEN_LOGGER)
    if not any(isinstance(f, _TokenNoticeFilter) for f in ray_logger.filters):
        ray_logger.addFilter(_TokenNoticeFilter())


@contextlib.contextmanager
def _native_stderr_to_debug() -> Iterator[None]:
    """Process-level stderr (Ray's C++ client logs bypass Python) into a temporary file, logged at debug."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            for line in sink.read().decode(errors="replace").splitlines()[-40:]:
                logger.debug("Ray: %s", line)


AUTH_MARKERS = ("InvalidAuthToken", "AuthenticationError", "Authentication token is missing or incorrect")


def join_error(exc: BaseException, address: str | None) -> MBSError:
    """Why ``ray.init`` failed, as one line: a refused authentication token (Ray >= 2.5x enables token
    authentication by default; the reason is in the exception's cause) or no cluster at all."""
    where = f"at {address!r}" if address else "locally"
    if refused_token(exc):
        return MBSError(f"the Ray cluster {where} refused this client's authentication token — on the head run "
                        "`ray get-auth-token` and set RAY_AUTH_MODE=token RAY_AUTH_TOKEN=<that token> here (or copy "
                        "it to ~/.ray/auth_token), or start both sides with RAY_AUTH_MODE=disabled")
    return MBSError(f"cannot start or join Ray {where} ({str(exc).splitlines()[0][:160]}) — start the "
                    "cluster with `ray start --head` first, or leave out --ray-address for a local Ray")


def refused_token(exc: BaseException | None) -> bool:
    """Whether ``exc`` or an exception it was raised from is Ray's authentication failure."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc).__name__ == "AuthenticationError" or any(m in str(exc) for m in AUTH_MARKERS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def run_ordered(fn: Callable[..., Any], calls: Sequence[tuple], *, shared: Any = None, window: int = 4,
                retries: int = 3, weights: Sequence[int] | None = None, progress: bool | None = None,
                desc: str = "tasks", unit: str = "task", num_cpus: float = 1) -> Iterator[Any]:
    """Run ``fn(shared, *call)`` for every call as Ray tasks (at most ``window`` submitted and not yet
    yielded) and yield the results in call order. ``shared`` is put in the object store once.
    The progress bar advances by ``weights[i]`` (default 1) as task i finishes, in any order."""
    ray = require_ray()
    remote = ray.remote(max_retries=retries, num_cpus=num_cpus)(fn)
    shared_ref = ray.put(shared)
    weights = list(weights) if weights is not None else [1] * len(calls)
    bar = progress_bar(progress, total=sum(weights), unit=unit, desc=desc)
    pending: dict[Any, int] = {}
    ready: dict[int, Any] = {}
    submitted = 0
    try:
        for index in range(len(calls)):
            while index not in ready:
                while submitted < len(calls) and len(pending) + len(ready) < max(window, 1):
                    pending[remote.remote(shared_ref, *calls[submitted])] = submitted
                    submitted += 1
                done, _ = ray.wait(list(pending), num_returns=1)
                finished = pending.pop(done[0])
                ready[finished] = _result(ray, done[0], retries)
                if bar is not None:
                    bar.update(weights[finished])
            yield ready.pop(index)
    finally:
        for ref in pending:
            with contextlib.suppress(Exception):
                ray.cancel(ref)
        if bar is not None:
            bar.close()


def _result(ray: Any, ref: Any, retries: int) -> Any:
    """A finished task's value; its failure as one MBSError line (the task's own MBSError kept)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, MBSError):
            raise MBSError(str(cause)) from None
        text = str(cause).splitlines()[0][:200] if cause is not None else ""
        raise MBSError(f"a Ray task failed: {type(cause).__name__}: {text} — check the data and model "
                       "on the worker's machine (same paths as here)") from None
    except ray.exceptions.RayError as exc:
        raise MBSError(f"a Ray task failed after {retries} retries ({type(exc).__name__}) — check the "
                       "workers' logs with `ray logs`") from None


class Actors:
    """Ray actors of one class; :meth:`call` runs a method on all of them and returns the results in actor order."""

    def __init__(self, ray: Any, handles: list[Any], retries: int) -> None:
        self.ray, self.handles, self.retries = ray, handles, retries

    def __len__(self) -> int:
        return len(self.handles)

    def call(self, method: str, *args: Any, done: Callable[[int], None] | None = None) -> list[Any]:
        """``method(*args)`` on every actor; ``done(i)`` as actor i's result arrives (in any order)."""
        pending = {getattr(h, method).remote(*args): i for i, h in enumerate(self.handles)}
        results: list[Any] = [None] * len(self.handles)
        while pending:
            ready, _ = self.ray.wait(list(pending), num_returns=1)
            i = pending.pop(ready[0])
            results[i] = _result(self.ray, ready[0], self.retries)
            if done is not None:
                done(i)
        return results


@contextlib.contextmanager
def actors(cls: type, calls: Sequence[tuple], *, shared: Any = None, retries: int = 3,
           num_cpus: float = 1) -> Iterator[Actors]:
    """One actor per call, made as ``cls(shared, *call)`` (``shared`` put in the object store once); a
    dead actor is restarted (``retries`` times) and its pending call re-run. The actors end with the block."""
    ray = require_ray()
    remote = ray.remote(max_restarts=retries, max_task_retries=retries, num_cpus=num_cpus)(cls)
    shared_ref = ray.put(shared)
    with _native_stderr_to_debug():  # Ray's C++ notice that restarts need the arguments kept: they are, here
        handles = [remote.remote(shared_ref, *call) for call in calls]
    try:
        yield Actors(ray, handles, retries)
    finally:
        for handle in handles:
            with contextlib.suppress(Exception):
                ray.kill(handle, no_restart=True)
