"""The accounter's compact state (node_agent/_cttable.c), fuzzed against a dict.

Every operation the accounter uses is replayed on a CounterTable and on a dict model with
random keys (a small pool, so inserts, deletes and re-inserts collide and probe chains wrap
around the table's end) and random 258-bit values; after every step the two must agree."""
from __future__ import annotations

import random

import pytest

_cttable = pytest.importorskip("node_agent._cttable", reason="built by `pip install -e .` (setup.py)")
CounterTable = _cttable.CounterTable

VMAX = 1 << 258


def check_equal(t, d):
    assert len(t) == len(d)
    assert dict(t.items()) == d
    assert sorted(t.keys()) == sorted(d)
    assert sorted(t.values()) == sorted(d.values())


@pytest.mark.parametrize("seed", range(12))
def test_random_operations_agree_with_a_dict(seed):
    rng = random.Random(seed)
    pool = [rng.randrange(-(1 << 63), 1 << 63) for _ in range(rng.choice((5, 40, 400)))]
    pool += [0, -1, (1 << 63) - 1, -(1 << 63)]
    t, d = CounterTable(), {}
    for step in range(3000):
        k = rng.choice(pool)
        op = rng.random()
        if op < 0.4:
            v = rng.choice((0, rng.randrange(4), rng.randrange(VMAX), (rng.randrange(1 << 64) << 2) | 3, VMAX - 1))
            t[k] = v
            d[k] = v
        elif op < 0.55:
            assert t.get(k) == d.get(k)
            assert t.get(k, "x") == d.get(k, "x")
            assert (k in t) == (k in d)
        elif op < 0.7:
            assert t.pop(k, None) == d.pop(k, None)
        elif op < 0.78:
            if k in d:
                del t[k]
                del d[k]
            else:
                with pytest.raises(KeyError):
                    del t[k]
                with pytest.raises(KeyError):
                    t[k]
        elif op < 0.82:
            mask = rng.choice((1, 2, 3))
            t.clear_bit(mask)
            d = {kk: vv & ~mask for kk, vv in d.items()}
        elif op < 0.86:
            bit = rng.choice((1, 2))
            parity = rng.choice((0, bit))
            got = t.take_unseen(bit, parity)
            want = {kk: vv for kk, vv in d.items() if vv & bit != parity}
            assert got == want
            for kk in want:
                del d[kk]
        elif op < 0.87:
            t.clear()
            d.clear()
        elif op < 0.95:
            # touch: the dump's idle case (same counters: flip the parity bit, no allocation)
            v = d.get(k, rng.randrange(VMAX)) if rng.random() < 0.7 else rng.randrange(VMAX)
            v ^= rng.randrange(4)
            parity = rng.choice((0, 2))
            if rng.random() < 0.5:
                got = t.touch(k, v, 2, parity)
            else:   # the same with the four counters unpacked
                c = v >> 2
                words = [(c >> (64 * j)) & ((1 << 64) - 1) for j in range(4)]
                if c >> 256:
                    got = t.touch(k, v, 2, parity)   # (touch4 takes 64-bit counters)
                else:
                    got = t.touch4(k, *words, 2, parity)
            if k not in d:
                assert got is None
            elif d[k] | 3 == v | 3:
                assert got is True
                d[k] = (d[k] & ~2) | parity
            else:
                assert got == d[k]
        elif op < 0.9:
            # in-place update of every entry while iterating (what the cut does), no resize
            for kk, vv in t.items():
                t[kk] = vv ^ 1
            d = {kk: vv ^ 1 for kk, vv in d.items()}
        if step % 50 == 0:
            check_equal(t, d)
    check_equal(t, d)


def test_many_entries_grow_and_shrink_back():
    t, d = CounterTable(), {}
    rng = random.Random(7)
    keys = [rng.randrange(-(1 << 63), 1 << 63) for _ in range(60_000)]
    for i, k in enumerate(keys):
        t[k] = d[k] = (i << 200) | i
    check_equal(t, d)
    assert t.__sizeof__() < 48 * 2 * 60_000 * 1.3   # inline slots, load <= 0.8
    for k in keys[::2]:
        assert t.pop(k) == d.pop(k)
    check_equal(t, d)


def test_bad_keys_and_values_are_refused():
    t = CounterTable()
    with pytest.raises(TypeError):
        t["a"] = 1
    with pytest.raises(OverflowError):
        t[1 << 63] = 1
    with pytest.raises(OverflowError):
        t[1] = -1
    with pytest.raises(OverflowError):
        t[1] = VMAX
    with pytest.raises(TypeError):
        t[1] = 1.5
    assert len(t) == 0


def test_resizing_during_iteration_is_an_error_not_a_crash():
    t = CounterTable()
    for k in range(5):
        t[k] = k
    it = t.items()
    next(it)
    for k in range(100, 200):
        t[k] = k
    with pytest.raises(RuntimeError):
        list(it)
