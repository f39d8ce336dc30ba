"""Reconstruction, part 3 — ridge-regularised least squares from accumulated normal equations.

A layer is one or several independent linear systems (*blocks*: one per conv group; a
dense conv or a Gemm is one block). For each block the rows ``x`` (inputs, plus a column
of ones when the layer has a bias) and ``y`` (targets) of every batch are folded into
``A = Σ xᵀx``, ``B = Σ xᵀy`` and ``Σ y²`` (each batch's product in float32, the sums in float64), so memory is ``dim² + dim·outputs``
per block, whatever the number of rows.

The solve is ridge regression *towards the inherited weights* ``W0``:
``(A + λ·s·I) W = B + λ·s·W0`` with ``s`` the mean of A's diagonal, so an under-determined
system (few images, many inputs) stays near the weights the layer already had instead of
shrinking to zero.
"""
from __future__ import annotations

import contextlib
import logging

import numpy as np

logger = logging.getLogger(__name__)

SYRK_DIM = 1024  # blocks at least this wide take Σ xᵀx by syrk (measured: 0.69 s vs 1.00 s at dim 4,608)


def blas_threads(threads: int | None):
    """A context with BLAS on ``threads`` threads (threadpoolctl, when installed; None: as it is)."""
    if threads is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: without it BLAS keeps its own thread count
        return contextlib.nullcontext()
    return threadpool_limits(limits=threads, user_api="blas")


def _blas():
    """scipy's BLAS wrappers (for syrk), or None without scipy (an optional dependency)."""
    try:
        from scipy.linalg import blas
    except ImportError:
        return None
    return blas


def one_blas_thread():
    """A context with BLAS on one thread: OpenBLAS's multi-threaded factorisations are many times slower
    than one thread on small shared machines."""
    return blas_threads(1)


def _solve(a: np.ndarray, b: np.ndarray, w0: np.ndarray, lam: float) -> tuple[np.ndarray, bool]:
    """The solution of ``(a + lam·I) w = b + lam·w0`` and whether it is exact (False: a least-squares fallback)."""
    lhs = a + lam * np.eye(a.shape[0])
    rhs = b + lam * w0
    try:
        import scipy.linalg as sl  # optional: Cholesky, half the work of numpy's LU
    except ImportError:
        sl = None
    if sl is not None:
        try:
            return sl.cho_solve(sl.cho_factor(lhs, check_finite=False, overwrite_a=True), rhs,
                                check_finite=False, overwrite_b=True), True
        except np.linalg.LinAlgError:
            lhs = a + lam * np.eye(a.shape[0])  # cho_factor may have overwritten it
    try:
        return np.linalg.solve(lhs, rhs), True
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(lhs, rhs, rcond=None)[0], False


class NormalEquations:
    """Σ xᵀx, Σ xᵀy and Σ y² of ``blocks`` independent systems with ``dim`` inputs and ``outputs`` targets."""

    def __init__(self, blocks: int, dim: int, outputs: int, *, buffer: int = 16 << 20) -> None:
        self._a = np.zeros((blocks, dim, dim))
        self._upper: np.ndarray | None = None  # Σ xᵀx of wide blocks, upper triangle only (syrk), not yet in _a
        self.b = np.zeros((blocks, dim, outputs))
        self.yy = np.zeros(blocks)
        self.rows = 0
        self.buffer = max(1, buffer // (4 * blocks * (dim + outputs)))  # rows held before one product
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.held = 0

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """Rows ``x`` (rows, blocks, dim) and targets ``y`` (rows, blocks, outputs); the products are taken
        over a few batches' rows at once (fewer, larger float32 products, each added to the float64 sums)."""
        self.pending.append((np.asarray(x, np.float32), np.asarray(y, np.float32)))
        self.held += x.shape[0]
        self.rows += x.shape[0]
        if self.held >= self.buffer:
            self.flush()

    @property
    def a(self) -> np.ndarray:
        """Σ xᵀx per block (blocks, dim, dim), symmetric."""
        if self._upper is not None:
            for g in range(self._upper.shape[0]):
                self._a[g] += self._upper[g] + np.triu(self._upper[g], 1).T
            self._upper = None
        return self._a

    @a.setter
    def a(self, value: np.ndarray) -> None:
        self._a, self._upper = value, None

    def flush(self) -> None:
        if not self.pending:
            return
        x = np.concatenate([p[0] for p in self.pending]) if len(self.pending) > 1 else self.pending[0][0]
        y = np.concatenate([p[1] for p in self.pending]) if len(self.pending) > 1 else self.pending[0][1]
        self.pending, self.held = [], 0
        xb = np.ascontiguousarray(x.transpose(1, 0, 2))
        yb = np.ascontiguousarray(y.transpose(1, 0, 2))
        blas = _blas() if xb.shape[2] >= SYRK_DIM else None
        if blas is not None:  # wide blocks: the symmetric product, a third less work than a general one
            if self._upper is None:
                self._upper = np.zeros_like(self._a)
            for g in range(xb.shape[0]):
                self._upper[g] += blas.ssyrk(1.0, xb[g], trans=1)
            self.b += np.matmul(xb.transpose(0, 2, 1), yb)
        else:  # many small blocks (grouped, depthwise): one batched general product
            xt = np.ascontiguousarray(xb.transpose(0, 2, 1))
            self._a += xt @ xb
            self.b += xt @ yb
        self.yy += np.einsum("gro,gro->g", yb, yb, dtype=np.float64)

    def merge(self, other: NormalEquations) -> None:
        """Add ``other``'s sums (the same layer's equations over other rows) to these."""
        self.flush()
        other.flush()
        if self.a.shape != other.a.shape or self.b.shape != other.b.shape:
            raise ValueError(f"cannot add normal equations of shape {other.b.shape} to {self.b.shape}")
        self.a = self.a + other.a  # new arrays: either side may be a read-only view from Ray's object store
        self.b = self.b + other.b
        self.yy = self.yy + other.yy
        self.rows += other.rows

    def __getstate__(self) -> dict:
        self.flush()  # what travels (to or from a Ray worker) is the sums, never pending rows
        _ = self.a  # nor a half-folded triangle
        return self.__dict__.copy()

    def solve(self, w0: np.ndarray, ridge: float) -> np.ndarray:
        """Ridge solution towards ``w0`` (blocks, dim, outputs); ``w0`` itself when there were no rows."""
        return self.fit(w0, ridge)[0]

    def fit(self, w0: np.ndarray, ridge: float) -> tuple[np.ndarray, float, float]:
        """The ridge solution towards ``w0`` and the relative errors (:meth:`residual`) of ``w0`` and of it.

        The solution's error needs no ``A·w`` product: ``(A + λI)·w = B + λ·w0`` gives
        ``wᵀA w = wᵀB + λ·wᵀ(w0 − w)``, so only ``w0``'s costs a ``dim² × outputs`` product."""
        self.flush()
        inherited = self.residual(w0)
        if self.rows == 0:
            return w0, inherited, inherited
        out = np.empty_like(self.b)
        dim = self.a.shape[1]
        quad, exact = 0.0, True
        with one_blas_thread():
            for g in range(self.a.shape[0]):
                lam = ridge * max(float(np.trace(self.a[g])) / dim, 1e-12)
                out[g], ok = _solve(self.a[g], self.b[g], w0[g], lam)
                exact &= ok
                quad += float(np.einsum("do,do->", out[g], self.b[g])) + lam * float(
                    np.einsum("do,do->", out[g], w0[g] - out[g]))
        total = float(self.yy.sum())
        if not exact:
            return out, inherited, self.residual(out)
        fitted = 0.0 if total <= 0 else max(total - 2 * float(np.einsum("gdo,gdo->", out, self.b)) + quad, 0.0) / total
        return out, inherited, fitted

    def residual(self, w: np.ndarray) -> float:
        """Σ ‖y − x·w‖² over all rows and blocks, divided by Σ ‖y‖² (0 = exact)."""
        self.flush()
        total = float(self.yy.sum())
        if total <= 0:
            return 0.0
        cross = np.einsum("gdo,gdo->", w, self.b)
        quad = np.einsum("gdo,gdo->", w, self.a @ w)
        return max(total - 2 * cross + quad, 0.0) / total
