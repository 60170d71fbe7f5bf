"""Exact vectorised parsing of decimal float tokens (what str() of a float32 writes) straight from a byte
buffer: SWAR digit arithmetic on 64-bit words, then one correctly rounded float64 division by a power of ten,
then float32 -- the same bits as Python's float() followed by float32.  Tokens off that fast path (nan, inf, more
than 14 fraction digits, big exponents, ...) go through float() itself."""
import numpy as np

_PAD = 32  # spare bytes before and after the data in the read buffer: fixed-width reads near its ends stay inside
_U = np.uint64
_P10 = np.array([float(10 ** k) for k in range(23)])  # 10**0..10**22: exactly representable in float64
_MAX_FRAC = 14  # fraction digits on the fast path: D*10**14 + fraction < 10**15 < 2**53, so the mantissa is exact
_BATCH = 1 << 16  # tokens per vectorised parse step: the temporaries stay in cache


def _window_masks():
    # For f = 0..16: masks keeping the last f bytes of a 16-byte little-endian window (lo = bytes 0-7, hi = 8-15).
    lo, hi = np.zeros(17, np.uint64), np.zeros(17, np.uint64)
    for f in range(17):
        keep = sum(0xFF << (8 * i) for i in range(16 - f, 16))
        lo[f], hi[f] = keep & 0xFFFFFFFFFFFFFFFF, keep >> 64
    return lo, hi


_MASK_LO, _MASK_HI = _window_masks()
_ASCII_ZEROS = _U(0x3030303030303030)
_HIGH_BITS = _U(0x8080808080808080)
_PLUS_118 = _U(0x7676767676767676)  # byte + 0x76 sets the high bit exactly when the byte is >= 10 (bytes < 0x80)


def _eight_digits(x):
    """x holds 8 digit values (0..9), the first digit in the lowest byte; returns the 8-digit integer.
    Each multiply adds a lane to 10/100/10000 times its lower neighbour; the shifts and masks keep the sums."""
    x = (x * _U(2561)) >> _U(8)
    x = ((x & _U(0x00FF00FF00FF00FF)) * _U(6553601)) >> _U(16)
    return ((x & _U(0x0000FFFF0000FFFF)) * _U(42949672960001)) >> _U(32)


def _parse_tokens(buf, starts, ends):
    """float32 values of the tokens buf[starts[i]:ends[i]], bit-identical to np.float32(float(token)).

    buf: uint8 array whose length is a multiple of 8 (read as aligned 64-bit words: numpy gathers unaligned
    words an order of magnitude slower), with at least _PAD spare bytes around the tokens.
    Fast path: [-]D.F...F[e(+|-)DD] with one integer digit and 1..14 fraction digits (what str(float32) writes
    for values below 10).  The mantissa D*10**f + fraction is an integer below 2**53 and 10**k (k <= 22) is
    exact, so mantissa / 10**k is the correctly rounded double, which is what float() returns.  The fraction is
    taken as the 16 bytes ending at its last digit (assembled from three aligned words), the bytes before it
    masked off, and converted 8 digits at a time (SWAR).  Every other token goes through float().
    Returns (values, index of the first token float() rejects or -1, that token); rejected tokens read as 0.
    """
    words = buf.view("<u8")
    neg = buf[starts] == 45  # '-'
    first = starts + neg
    digit = buf[first] ^ np.uint8(48)
    ok = (digit <= 9) & (buf[first + 1] == 46)  # "D."
    has_exp = buf[ends - 4] == 101  # 'e' four bytes before the end: e+DD / e-DD
    frac_end = ends - 4 * has_exp
    frac_len = frac_end - first - 2
    ok &= (frac_len >= 1) & (frac_len <= _MAX_FRAC)
    f = np.clip(frac_len, 0, _MAX_FRAC)
    at = frac_end - 16
    q = at >> 3
    shift = ((at & 7) << 3).astype(np.uint64)
    back = _U(63) - shift  # (w << 1) << (63 - s) == w << (64 - s), and 0 for s == 0
    w1 = words[q + 1]
    lo = (words[q] >> shift) | ((w1 << _U(1)) << back)
    hi = (w1 >> shift) | ((words[q + 2] << _U(1)) << back)
    lo ^= _ASCII_ZEROS  # XOR maps '0'..'9' to 0..9, with no borrows between bytes
    lo &= _MASK_LO[f]
    hi ^= _ASCII_ZEROS
    hi &= _MASK_HI[f]
    ok &= (((lo + _PLUS_118) | lo | (hi + _PLUS_118) | hi) & _HIGH_BITS) == 0  # every fraction byte a digit
    mantissa = (_eight_digits(lo) * _U(100000000) + _eight_digits(hi)).astype(np.float64)
    mantissa += digit * _P10[f]
    power = f
    exp_at = np.flatnonzero(has_exp)
    if len(exp_at):  # rare in embeddings (|x| < 1e-4): handled on the subset
        e_end = ends[exp_at]
        sign, d1, d2 = buf[e_end - 3], buf[e_end - 2].astype(np.int64) - 48, buf[e_end - 1].astype(np.int64) - 48
        p = f[exp_at] + np.where(sign == 45, 1, -1) * (d1 * 10 + d2)
        ok[exp_at] &= ((sign == 43) | (sign == 45)) & (d1 >= 0) & (d1 <= 9) & (d2 >= 0) & (d2 <= 9) & \
            (p >= 0) & (p <= 22)
        power = f.copy()
        power[exp_at] = np.clip(p, 0, 22)
    value = mantissa / _P10[power]
    value *= 1 - 2 * neg.view(np.int8)  # the sign; multiplying by -1 is exact (and far faster than where=)
    out = value.astype(np.float32)
    bad, bad_token = -1, b""
    for i in np.flatnonzero(~ok).tolist():
        token = buf[starts[i]:ends[i]].tobytes()
        try:
            out[i] = float(token)
        except ValueError:
            out[i] = 0.0
            if bad < 0:
                bad, bad_token = i, token
    return out, bad, bad_token
