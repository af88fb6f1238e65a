"""Wind spreading by normalised convolution (docs/design.md §5 step 6).

Each kernel is a binary ellipse scaled to sum 1, so a correlation with it is a sum of
contiguous runs times one weight. Summing runs from float64 running sums costs O(runs) per
pixel instead of O(kernel area), and has none of the FFT noise that made the published code
need its 1e-11 threshold (the threshold is still applied, as published). Runs go along
whichever axis gives fewer of them (the N/S ellipses are tall, so they run down columns).

The mask and value correlations of one round are computed together, a block of rows at a
time, by a compiled loop that releases the GIL: the blocks run on a thread pool, and memory
beyond the input and output is a few running-sum rows per block.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba
import numpy as np

from ocr_science.parallel import blocks, worker_threads

# Published: values below this after a convolution are numerical noise and become 0.
NOISE_FLOOR = 1e-11
ITERATIONS = 3
# Output rows per compiled call: small enough to spread over threads, big enough that the
# running sums of the kernel's extra rows (up to 80) are a small overhead.
BLOCK_ROWS = 256


@dataclass(frozen=True)
class RunKernel:
    """A binary kernel as contiguous runs along rows (``along_x``) or down columns.

    A correlation is then ``weight · Σ_runs (P[plus] − P[minus])`` where ``P`` holds running
    sums of the input along the runs' axis; each run is stored as the offsets of its two
    lookups relative to the output pixel, in a ``P`` that starts ``ylo`` rows and ``xlo``
    columns from it. Runs go along whichever axis gives fewer of them.
    """

    weight: float
    along_x: bool
    ylo: int  # first source row offset used (relative to the output row)
    yhi: int  # last source row offset used
    xlo: int
    xhi: int
    plus: np.ndarray  # (runs, 2) int64: (row, column) offsets into P of the run's end
    minus: np.ndarray  # (runs, 2) int64: … of the sum just before the run's start

    @property
    def runs(self) -> int:
        return len(self.plus)

    @classmethod
    def from_kernel(cls, kernel: np.ndarray) -> RunKernel:
        """Runs of ``kernel`` (anchored at its centre); rejects a kernel that is not binary
        with one contiguous run per line."""
        nonzero = kernel != 0
        values = np.unique(kernel[nonzero])
        if values.size != 1:
            raise ValueError("kernel must have one non-zero value (a normalised binary mask)")
        along_x = nonzero.any(axis=1).sum() <= nonzero.any(axis=0).sum()
        lines = nonzero if along_x else nonzero.T
        runs = []
        for line in np.flatnonzero(lines.any(axis=1)):
            cells = np.flatnonzero(lines[line])
            if cells[-1] - cells[0] + 1 != cells.size:
                raise ValueError(f"kernel line {line} is not one contiguous run")
            runs.append((line, cells[0], cells[-1]))
        line, first, last = (np.array(v, dtype=np.int64) for v in zip(*runs, strict=True))
        cy, cx = kernel.shape[0] // 2, kernel.shape[1] // 2
        if along_x:  # P[k, t + 1] = Σ_{t' ≤ t} a[row, col]: run = P[., last + 1] − P[., first]
            ylo, yhi, xlo, xhi = line.min() - cy, line.max() - cy, first.min() - cx, last.max() - cx
            plus = np.stack([line - cy - ylo, last - cx - xlo + 1], axis=1)
            minus = np.stack([line - cy - ylo, first - cx - xlo], axis=1)
        else:  # P[k + 1, t] = Σ_{k' ≤ k} a[row, col]: run = P[last + 1, .] − P[first, .]
            ylo, yhi, xlo, xhi = first.min() - cy, last.max() - cy, line.min() - cx, line.max() - cx
            plus = np.stack([last - cy - ylo + 1, line - cx - xlo], axis=1)
            minus = np.stack([first - cy - ylo, line - cx - xlo], axis=1)
        weight = float(values[0])
        return cls(weight, bool(along_x), int(ylo), int(yhi), int(xlo), int(xhi), plus, minus)


@numba.njit(cache=True, inline="always")
def _reflect101(i: int, n: int) -> int:
    """OpenCV BORDER_REFLECT_101 index (``gfedcb|abcdefgh|gfedcba``), repeated as needed."""
    if n == 1:
        return 0
    while i < 0 or i >= n:
        i = -i if i < 0 else 2 * (n - 1) - i
    return i


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _normalised_rows(
    arr: np.ndarray,
    out: np.ndarray,
    i0: int,
    i1: int,
    along_x: bool,
    ylo: int,
    yhi: int,
    xlo: int,
    xhi: int,
    plus: np.ndarray,
    minus: np.ndarray,
    weight: float,
    floor: float,
) -> None:
    """Rows ``i0:i1`` of one round: ``out = corr(arr, K) / corr(arr > 0, K)`` (0 where the
    mask correlation is 0), both correlations rounded to float32 and floored as published.

    Running sums of the values are float64 (no cancellation error worth the name at 1e-4);
    those of the mask are counts, exact in float32, which halves their memory traffic.
    """
    h, w = arr.shape
    n_src = i1 - i0 + yhi - ylo + 1  # source rows the block reads
    n_p = n_src if along_x else n_src + 1
    width = w + xhi - xlo + 1 if along_x else w + xhi - xlo
    csum = np.zeros((n_p, width))
    msum = np.zeros((n_p, width), np.float32)
    one, zero = np.float32(1.0), np.float32(0.0)
    for k in range(n_src):
        src = arr[_reflect101(i0 + ylo + k, h)]
        if along_x:
            c, m = 0.0, zero
            crow, mrow = csum[k], msum[k]
            for t in range(width - 1):
                v = src[_reflect101(t + xlo, w)]
                c += v
                m += one if v > 0 else zero
                crow[t + 1] = c
                mrow[t + 1] = m
        else:
            cprev, mprev, crow, mrow = csum[k], msum[k], csum[k + 1], msum[k + 1]
            for t in range(width):
                v = src[_reflect101(t + xlo, w)]
                crow[t] = cprev[t] + v
                mrow[t] = mprev[t] + (one if v > 0 else zero)
    acc_c = np.empty(w)
    acc_m = np.empty(w, np.float32)
    for i in range(i0, i1):
        acc_c[:] = 0.0
        acc_m[:] = 0.0
        for r in range(plus.shape[0]):
            kp, jp = i - i0 + plus[r, 0], plus[r, 1]
            km, jm = i - i0 + minus[r, 0], minus[r, 1]
            cp, cm = csum[kp, jp : jp + w], csum[km, jm : jm + w]
            for j in range(w):
                acc_c[j] += cp[j] - cm[j]
            mp, mm = msum[kp, jp : jp + w], msum[km, jm : jm + w]
            for j in range(w):
                acc_m[j] += mp[j] - mm[j]
        orow = out[i]
        for j in range(w):
            c32 = np.float32(acc_c[j] * weight)
            m32 = np.float32(acc_m[j] * weight)
            if c32 < floor:
                c32 = zero
            orow[j] = c32 / m32 if m32 >= floor and m32 > 0 else zero


class Spreader:
    """Spreads one field along any number of kernels, reusing its thread pool and two work
    buffers (a full-size field is 160 MB; the rounds ping-pong between the buffers)."""

    def __init__(self, bp30: np.ndarray, threads: int | None = None) -> None:
        self.missing = np.isnan(bp30)
        # NaN (no data) counts as 0 while spreading
        self.start = np.where(self.missing, np.float32(0), bp30).astype(np.float32, copy=False)
        self.buffers = (np.empty_like(self.start), np.empty_like(self.start))
        self.pool = ThreadPoolExecutor(threads or worker_threads(), thread_name_prefix="ocr-spread")

    def __enter__(self) -> Spreader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown()

    def spread(self, kernel: np.ndarray, iterations: int = ITERATIONS) -> np.ndarray:
        """The field spread along ``kernel``, NaN where the input was NaN. The array is one
        of the work buffers: it is overwritten by the next call."""
        runs = RunKernel.from_kernel(kernel)
        src = self.start
        for n in range(iterations):
            out = self.buffers[n % 2]
            self._round(src, out, runs)
            src = out
        src[self.missing] = np.nan
        return src

    def _round(self, arr: np.ndarray, out: np.ndarray, runs: RunKernel) -> None:
        """One normalised-convolution round over the whole array, blocks of rows in parallel."""
        args = (runs.along_x, runs.ylo, runs.yhi, runs.xlo, runs.xhi, runs.plus, runs.minus)
        futures = [
            self.pool.submit(
                _normalised_rows, arr, out, rows.start, rows.stop, *args, runs.weight, NOISE_FLOOR
            )
            for rows in blocks(arr.shape[0], BLOCK_ROWS)
        ]
        for future in futures:
            future.result()


def spread(bp30: np.ndarray, kernel: np.ndarray, iterations: int = ITERATIONS) -> np.ndarray:
    """Spread burn probability into non-burnable pixels along one wind direction.

    Three rounds of normalised convolution: the mean of the burnable neighbours under the
    kernel. NaN (no data) counts as 0 while spreading and is restored afterwards.
    """
    with Spreader(bp30) as spreader:
        return spreader.spread(kernel, iterations).copy()
