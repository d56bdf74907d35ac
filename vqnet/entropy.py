"""Static-prior range coding of VQGAN codebook indices.

The paper's reference code range-codes indices with a *uniform* PMF, which
costs exactly ``log2(K)`` bits per index.  Codebook usage is far from
uniform, so a static, per-K prior estimated from training indices is a cheap
and real rate improvement.

Neighbouring indices are strongly dependent (on Kodak, knowing the left
neighbour cuts the cost of a K=256 index from 7.4 to 5.4 bits), so a prior may
also carry a *context table*: row ``c`` is the distribution of an index whose
coded neighbour is ``c``.  Which earlier symbols of the same stream serve as a
symbol's neighbours is the caller's business (``refs``; the packetizer names the
left and the upper grid neighbour when they travel in the same packet).  A prior
codes against the left neighbour, else the upper one; one with a ``pair``
exponent ``a`` codes a symbol that has both against the tempered product of
their two rows, ``T[l]^a * T[u]^a * p^(1-2a)``: no new table, ~7 % fewer bits
on Kodak at K=1024 and 256 (``scripts/experiments/context_bits.py``).  Context never
crosses a stream, so every packet stays decodable on its own.

Coding uses :mod:`constriction`'s ``RangeEncoder``/``RangeDecoder`` (32-bit
words, 24-bit model precision).  Each independent stream costs about one
(at most two) 32-bit words on top of the information content, and its length
is always a whole number of words, so every packet pays roughly 32 bits of
overhead.

Wire format of :func:`encode`: the coder's ``uint32`` words serialised
little-endian, nothing else.  The symbol count is *not* stored; the caller
(the packet header) carries it.  An empty symbol array encodes to ``b""``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

import constriction
import numpy as np

from vqnet.errors import VqnetError

__all__ = [
    "EntropyError",
    "Prior",
    "MAX_SYMBOLS_PER_BYTE",
    "max_symbols",
    "encode",
    "decode",
    "encoded_size_bits",
]

#: Decoding bound: at most this many symbols per payload byte (plus a small
#: constant, see :func:`max_symbols`).  A range decoder happily "decodes" any
#: number of symbols from any data, so a forged symbol count would otherwise
#: make us allocate and loop over up to 2**32 symbols.  512 symbols per byte
#: means >= 1/64 bit per symbol, i.e. it only binds when one code has
#: probability > 0.989.  :func:`encode` refuses to emit streams that violate
#: the bound, so everything it produces is decodable.
MAX_SYMBOLS_PER_BYTE = 512

_WORD = np.dtype("<u4")  # little-endian uint32, regardless of host order
#: Context rows are integer weights in 1..65535, so a stored table is exact on every machine.
CONTEXT_SCALE = 65535
_FAMILY = constriction.stream.model.Categorical(perfect=False)  # per-symbol distributions
_SUM_TOL = 1e-4  # float32 probability tables sum to 1 only up to rounding
#: The ``pair`` exponents a prior may use: their powers take only square roots, products and
#: quotients, which IEEE 754 rounds exactly, so both ends build bit-identical rows anywhere.
PAIR_EXPONENTS = (0.5, 0.75, 1.0)
_PAIR_BITS = 24  # a product row is rounded to integer weights below 2**24 + 1 (exact sums)


class EntropyError(VqnetError, ValueError):
    """Raised for invalid or undecodable entropy-coded data."""


def max_symbols(nbytes: int) -> int:
    """Largest symbol count :func:`decode` accepts for ``nbytes`` of data.

    Zero for empty data: :func:`encode` never produces ``b""`` for a
    non-empty message (a non-empty range-coder stream is at least one word).
    """
    if nbytes <= 0:
        return 0
    return MAX_SYMBOLS_PER_BYTE * nbytes + 64


@dataclass(frozen=True, eq=False)
class Prior:
    """A static categorical distribution over the K codebook indices.

    ``probs`` is stored as a read-only copy so the cached constriction model
    can never go stale.  Equality and hashing are by identity (``eq=False``):
    comparing float arrays by value is ambiguous, and identity is exactly
    what the model cache needs.
    """

    probs: np.ndarray
    #: Optional (K, K) uint16 context weights: row c, normalised, is the distribution of an
    #: index whose neighbour is c. Integers rather than floats so that the float32 rows both
    #: ends build from a stored table are bit-identical everywhere (integer sums, IEEE division).
    context: np.ndarray | None = None
    #: Optional exponent (one of :data:`PAIR_EXPONENTS`) for symbols with two coded neighbours.
    pair: float | None = None

    def __post_init__(self) -> None:
        p = np.array(self.probs, copy=True)
        if p.dtype not in (np.float32, np.float64):
            raise ValueError(f"prior probs must be float32 or float64, got {p.dtype}")
        if p.ndim != 1 or p.shape[0] < 2:
            raise ValueError(f"prior probs must have shape (K,) with K >= 2, got {p.shape}")
        if not np.all(np.isfinite(p)):
            raise ValueError("prior probs must be finite")
        # Checked in float32 too: the coder model is built from float32 (see
        # _model), and a tiny float64 entry must not underflow to 0 there.
        if not (np.all(p > 0) and np.all(p.astype(np.float32) > 0)):
            raise ValueError("every prior probability must be > 0 (even in float32)")
        total = float(p.sum(dtype=np.float64))
        if abs(total - 1.0) > _SUM_TOL:
            raise ValueError(f"prior probs must sum to 1, got {total!r}")
        p.flags.writeable = False
        object.__setattr__(self, "probs", p)
        if self.context is not None:
            c = np.array(self.context, copy=True)
            if c.dtype != np.uint16 or c.shape != (p.shape[0], p.shape[0]):
                raise ValueError(
                    f"context must be a ({p.shape[0]}, {p.shape[0]}) uint16 array, got {c.dtype} {c.shape}"
                )
            if not np.all(c > 0):
                raise ValueError("every context weight must be >= 1")
            c.flags.writeable = False
            object.__setattr__(self, "context", c)
        if self.pair is not None:
            if self.context is None:
                raise ValueError("a pair exponent needs a context table")
            if float(self.pair) not in PAIR_EXPONENTS:
                raise ValueError(f"pair exponent must be one of {PAIR_EXPONENTS}, got {self.pair!r}")
            object.__setattr__(self, "pair", float(self.pair))

    @classmethod
    def from_counts(cls, counts: np.ndarray | Iterable[float], alpha: float = 0.5) -> Prior:
        """Smoothed estimate ``(counts + alpha) / (N + alpha*K)``.

        Smoothing is essential, not cosmetic: a code never seen in the
        training indices would otherwise get probability 0, and an image that
        uses it could not be coded at all (or would cost the coder's floor of
        24 bits).  ``alpha=0.5`` is the Krichevsky-Trofimov estimator, which
        is near-optimal for coding unseen data from a categorical source.
        """
        c = np.asarray(counts, dtype=np.float64)
        if c.ndim != 1 or c.shape[0] < 2:
            raise ValueError(f"counts must have shape (K,) with K >= 2, got {c.shape}")
        if not np.all(np.isfinite(c)) or np.any(c < 0):
            raise ValueError("counts must be finite and non-negative")
        if not (alpha > 0 and np.isfinite(alpha)):
            raise ValueError(f"alpha must be a positive finite number, got {alpha!r}")
        smoothed = c + alpha
        return cls(smoothed / smoothed.sum())

    def with_context(self, pair_counts: np.ndarray, strength: float = 32.0) -> Prior:
        """This prior plus a context table estimated from ``pair_counts[c, x]`` (how often x
        sat beside c in training index maps).

        Each row is shrunk towards the marginal, ``(pairs[c] + strength * p) / (n_c + strength)``:
        a context seen thousands of times speaks for itself, a rare one falls back to the
        marginal instead of to noise. The rows are then rounded to 16-bit weights (at least 1,
        so no index is ever uncodable).
        """
        pairs = np.asarray(pair_counts, dtype=np.float64)
        K = self.K
        if pairs.shape != (K, K) or not np.all(np.isfinite(pairs)) or np.any(pairs < 0):
            raise ValueError(f"pair_counts must be a finite non-negative ({K}, {K}) array")
        if not (strength > 0 and np.isfinite(strength)):
            raise ValueError(f"strength must be a positive finite number, got {strength!r}")
        rows = (pairs + strength * self.probs.astype(np.float64)) / (pairs.sum(1, keepdims=True) + strength)
        weights = np.clip(np.round(rows * CONTEXT_SCALE), 1, CONTEXT_SCALE).astype(np.uint16)
        return Prior(self.probs, weights)

    @classmethod
    def uniform(cls, K: int) -> Prior:
        """The uniform prior: ``log2(K)`` bits per index, the paper's baseline."""
        if K < 2:
            raise ValueError(f"K must be >= 2, got {K}")
        return cls(np.full(K, 1.0 / K))

    @classmethod
    def from_indices(cls, indices: Iterable[np.ndarray], K: int, alpha: float = 0.5) -> Prior:
        """Estimate a prior from an iterable of index arrays (any shapes)."""
        if K < 2:
            raise ValueError(f"K must be >= 2, got {K}")
        counts = np.zeros(K, dtype=np.int64)
        for arr in indices:
            a = np.asarray(arr)
            if a.size == 0:
                continue
            if not np.issubdtype(a.dtype, np.integer):
                raise ValueError(f"indices must be integers, got {a.dtype}")
            if a.min() < 0 or a.max() >= K:
                raise ValueError(f"indices must lie in [0, {K})")
            counts += np.bincount(a.ravel().astype(np.int64), minlength=K)
        return cls.from_counts(counts, alpha=alpha)

    @classmethod
    def from_array(cls, arr: np.ndarray, context: np.ndarray | None = None, pair: float | None = None) -> Prior:
        """Inverse of :meth:`to_array` (and of :attr:`context` and :attr:`pair`, stored as they are)."""
        return cls(np.asarray(arr, dtype=np.float32), None if context is None else np.asarray(context), pair)

    def with_pair(self, pair: float | None) -> Prior:
        """This prior coding two-neighbour symbols with exponent ``pair`` (None: one neighbour)."""
        return Prior(self.probs, self.context, pair)

    @property
    def K(self) -> int:
        """Codebook size."""
        return int(self.probs.shape[0])

    def to_array(self) -> np.ndarray:
        """float32 copy, storable in safetensors.

        Round-trips exactly to the same coder model because :attr:`_model`
        is always built from the float32 cast.
        """
        return self.probs.astype(np.float32)

    def entropy_bits(self) -> float:
        """Shannon entropy in bits per symbol: the ideal i.i.d. coding rate."""
        p = self.probs.astype(np.float64)
        return float(-(p * np.log2(p)).sum())

    def information_bits(self, symbols: np.ndarray, refs: np.ndarray | None = None) -> np.ndarray:
        """Per-symbol information content ``-log2 p[s]`` (float64 array), under the context
        table where ``refs`` (as for :func:`encode`) names a neighbour.

        This is what the range coder spends per symbol, up to model
        quantisation; the packetizer uses it to guess how many symbols fit.
        """
        s = np.asarray(symbols)
        if refs is None or self.context is None:
            return -np.log2(self.probs.astype(np.float64)[s])
        r = _as_pairs(np.asarray(refs))
        if self.pair is None:  # one table row per symbol: gather the entries, not whole rows
            return -np.log2(self._table.astype(np.float64)[self._contexts(s, r), s])
        return -np.log2(self._rows(s, r)[np.arange(s.size), s].astype(np.float64))

    def neighbour_log_ratios(self) -> np.ndarray:
        """(K, K) float64: row c is ``log p(x | neighbour c) - log p(x)``, how much seeing code c
        next to a position raises or lowers each code there. Concealment adds these to a model's
        log-probabilities (:func:`vqnet.restore.masked.conceal_masked`). Needs a context table."""
        if self.context is None:
            raise ValueError("this prior has no context table")
        t = np.log(self._table.astype(np.float64))
        return t[: self.K] - t[self.K]

    def most_frequent(self) -> int:
        """Index of the most probable code (a natural fill for lost indices)."""
        return int(np.argmax(self.probs))

    @cached_property
    def _model(self) -> constriction.stream.model.Categorical:
        # Built once per Prior: construction is O(K) and packetizing calls the
        # coder many times.  Always from float32 so that a prior and its
        # safetensors round-trip (to_array/from_array) quantise identically;
        # encoder and decoder models must match bit for bit.
        return constriction.stream.model.Categorical(self.probs.astype(np.float32), perfect=False)

    @cached_property
    def _table(self) -> np.ndarray:
        """(K + 1, K) float32: the context rows, then the marginal (row K, for "no neighbour")."""
        assert self.context is not None
        w = self.context.astype(np.float64)
        rows = (w / w.sum(axis=1, keepdims=True)).astype(np.float32)
        return np.vstack([rows, self.probs.astype(np.float32)[None]])

    @cached_property
    def _pair_factors(self) -> tuple[np.ndarray, np.ndarray]:
        """(K, K) context rows to the power ``pair`` and (K,) marginal to the power 1 - 2 ``pair``,
        float64, from square roots, products and quotients only (exact IEEE operations)."""
        assert self.context is not None and self.pair is not None
        w = self.context.astype(np.float64)
        rows = w / w.sum(axis=1, keepdims=True)
        p = self.probs.astype(np.float32).astype(np.float64)
        if self.pair == 0.5:
            return np.sqrt(rows), np.ones_like(p)
        if self.pair == 0.75:
            return np.sqrt(rows) * np.sqrt(np.sqrt(rows)), 1.0 / np.sqrt(p)
        return rows, 1.0 / p

    def _contexts(self, symbols: np.ndarray, refs: np.ndarray) -> np.ndarray:
        """Row of :attr:`_table` for each symbol coded against one neighbour: the code of its left
        neighbour, else of its upper one, else K (the marginal)."""
        one = np.where(refs[:, 0] >= 0, refs[:, 0], refs[:, 1])
        return np.where(one >= 0, symbols[np.maximum(one, 0)], self.K)

    def _rows(self, symbols: np.ndarray, refs: np.ndarray) -> np.ndarray:
        """(n, K) float32 distribution of each symbol given its (n, 2) [left, upper] refs, where
        the refs point at symbols already known (all of them when encoding)."""
        left, up = refs[:, 0], refs[:, 1]
        rows = self._table[self._contexts(symbols, refs)]
        if self.pair is not None:
            both = np.flatnonzero((left >= 0) & (up >= 0))
            if both.size:
                rows = rows.copy()
                rows[both] = self._pair_rows(symbols[left[both]], symbols[up[both]])
        return rows

    def _pair_rows(self, left: np.ndarray, up: np.ndarray) -> np.ndarray:
        """(m, K) float32 rows for neighbour codes ``left``, ``up``: the tempered product, scaled
        by its (exact) maximum and floored to integer weights, whose sum is exact in float64, so
        the normalised row is the same on every machine and in every batch size."""
        power, marginal = self._pair_factors
        q = (power[left] * power[up]) * marginal
        weights = np.floor(q / q.max(axis=1, keepdims=True) * float(2**_PAIR_BITS)) + 1.0
        return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def _as_pairs(refs: np.ndarray) -> np.ndarray:
    """(n, 2) [left, upper] refs; a 1-D ``refs`` names one neighbour per symbol (upper = -1)."""
    r = np.asarray(refs, dtype=np.int64)
    return r if r.ndim == 2 else np.stack([r, np.full_like(r, -1)], axis=1)


def _check_refs(refs: np.ndarray | None, n: int, prior: Prior) -> np.ndarray | None:
    """Validated (n, 2) neighbour references (each -1 or an earlier position), or None when the
    stream is coded without context. ``refs`` is (n,) (one neighbour each) or (n, 2) (left, upper)."""
    if refs is None or prior.context is None:
        return None
    r = np.asarray(refs)
    if r.shape not in ((n,), (n, 2)) or (n and not np.issubdtype(r.dtype, np.integer)):
        raise EntropyError(f"refs must be {n} integers or {n} pairs, got {r.dtype} {r.shape}")
    r = _as_pairs(r)
    if n and (np.any(r < -1) or np.any(r >= np.arange(n)[:, None])):
        raise EntropyError("each ref must be -1 or the position of an earlier symbol")
    return r


def _check_symbols(symbols: np.ndarray, K: int) -> np.ndarray:
    s = np.asarray(symbols)
    if s.ndim != 1:
        raise EntropyError(f"symbols must be 1-D, got shape {s.shape}")
    if s.size and not np.issubdtype(s.dtype, np.integer):
        raise EntropyError(f"symbols must be integers, got {s.dtype}")
    if s.size and (s.min() < 0 or s.max() >= K):
        raise EntropyError(f"symbols must lie in [0, {K})")
    return s.astype(np.int32)


def encode(symbols: np.ndarray, prior: Prior, refs: np.ndarray | None = None) -> bytes:
    """Range-code a 1-D array of indices in ``[0, prior.K)`` as one stream.

    With a context prior and ``refs`` (``refs[i]`` = position in this stream of symbol i's
    neighbour, or -1; or a pair [left, upper] per symbol), symbol i is coded with the context row
    of its left neighbour, else of its upper one, or with both (:attr:`Prior.pair`); the decoder
    must be given the same ``refs``. Otherwise every symbol uses the marginal.

    Returns little-endian uint32 words; ``b""`` for an empty array.  Raises
    :class:`EntropyError` for invalid symbols, or when the message has more
    symbols than :func:`max_symbols` allows for its encoded length (only
    possible with a prior whose top code has probability > 0.989).
    """
    s = _check_symbols(symbols, prior.K)
    r = _check_refs(refs, s.size, prior)
    if s.size == 0:
        return b""
    encoder = constriction.stream.queue.RangeEncoder()
    if r is None:
        encoder.encode(s, prior._model)
    else:
        encoder.encode(s, _FAMILY, prior._rows(s, r))
    data = encoder.get_compressed().astype(_WORD).tobytes()
    if s.size > max_symbols(len(data)):
        raise EntropyError(
            f"{s.size} symbols in {len(data)} bytes exceeds the decodable bound "
            f"{max_symbols(len(data))}; split the message"
        )
    return data


def decode(data: bytes, n: int, prior: Prior, refs: np.ndarray | None = None) -> np.ndarray:
    """Decode ``n`` indices from a stream made by :func:`encode` (with the same ``refs``).

    Never crashes or hangs on garbage: raises :class:`EntropyError` if the
    length is not a multiple of 4, ``n`` is negative or exceeds
    :func:`max_symbols` (a forged count), the coder rejects the data, or
    data is left over after ``n`` symbols.  Garbage that happens to decode
    cleanly is not detectable here; the packet CRC is the integrity check.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise EntropyError(f"data must be bytes-like, got {type(data).__name__}")
    raw = bytes(data)
    if len(raw) % 4:
        raise EntropyError(f"data length {len(raw)} is not a multiple of 4")
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise EntropyError(f"symbol count must be a non-negative int, got {n!r}")
    if n > max_symbols(len(raw)):
        raise EntropyError(f"{n} symbols cannot come from {len(raw)} bytes (max {max_symbols(len(raw))})")
    r = _check_refs(refs, int(n), prior)
    if n == 0:
        if raw:
            raise EntropyError("non-empty data for zero symbols")
        return np.zeros(0, dtype=np.int64)
    words = np.frombuffer(raw, dtype=_WORD).astype(np.uint32)
    try:
        decoder = constriction.stream.queue.RangeDecoder(words)
        if r is None:
            out = decoder.decode(prior._model, int(n))
        else:  # each symbol's row depends on symbols decoded before it: one at a time, as
            # Prior._rows picks them (scalar here: this loop is the receiver's hot path)
            table, pair, out = prior._table, prior.pair is not None, np.zeros(int(n), dtype=np.int64)
            for i, (left, up) in enumerate(r.tolist()):
                if pair and left >= 0 and up >= 0:
                    row = prior._pair_rows(out[left : left + 1], out[up : up + 1])
                else:
                    ref = left if left >= 0 else up
                    c = out[ref] if ref >= 0 else prior.K
                    row = table[c : c + 1]
                out[i] = decoder.decode(_FAMILY, row)[0]
        exhausted = decoder.maybe_exhausted()
    except Exception as exc:  # constriction raises AssertionError, ValueError, ...
        raise EntropyError(f"range decoder rejected data: {exc}") from exc
    if not exhausted:
        # A valid stream is fully consumed by exactly n symbols (documented
        # guarantee of maybe_exhausted), so leftovers mean a wrong n or data.
        raise EntropyError("data left over after decoding the requested symbols")
    return np.asarray(out, dtype=np.int64)


def encoded_size_bits(symbols: np.ndarray, prior: Prior, refs: np.ndarray | None = None) -> int:
    """Actual coded size in bits (whole 32-bit words) of one stream."""
    return 8 * len(encode(symbols, prior, refs))
