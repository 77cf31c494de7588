"""BlockPool: the boundary contract, and a model-based test against a pure-Python pool."""

import threading
from collections import deque

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import ferrum_kv as fkv


def snapshot(pool):
    return (pool.num_free_blocks, [pool.ref_count(i) for i in range(pool.num_blocks)])


def test_allocate_returns_int32_ids_in_order():
    pool = fkv.BlockPool(num_blocks=10)
    ids = pool.allocate(4)
    assert ids.dtype == np.int32 and ids.shape == (4,)
    assert ids.tolist() == [0, 1, 2, 3]
    assert pool.num_used_blocks == 4 and pool.num_free_blocks == 6 and len(pool) == 10
    assert pool.allocate(0).shape == (0,)
    pool.check_invariants()


def test_free_reuses_least_recently_freed_first():
    pool = fkv.BlockPool(num_blocks=5)
    pool.allocate(5)
    pool.free(np.array([3, 1], dtype=np.int32))
    pool.free([4])
    assert pool.allocate(3).tolist() == [3, 1, 4]


def test_out_of_blocks_is_typed_and_changes_nothing():
    pool = fkv.BlockPool(num_blocks=4)
    pool.allocate(3)
    before = snapshot(pool)
    with pytest.raises(fkv.OutOfBlocksError, match=r"cannot allocate 2 blocks: only 1 of 4"):
        pool.allocate(2)
    assert issubclass(fkv.OutOfBlocksError, fkv.Error)
    assert issubclass(fkv.Error, RuntimeError)
    assert snapshot(pool) == before
    assert pool.stats()["allocation_failures"] == 1
    with pytest.raises(fkv.OutOfBlocksError):
        pool.allocate(2**62)
    assert snapshot(pool) == before
    pool.check_invariants()


@pytest.mark.parametrize(
    "bad, error",
    [
        ([0, 1, 7], IndexError),
        ([-1], IndexError),
        ([2**40], IndexError),
        (np.array([2**63], dtype=np.uint64), IndexError),
        ([0, 5], ValueError),  # 5 is free: double free
        ([2, 2], ValueError),  # one reference, dropped twice
        ([1.0], ValueError),
        ([np.nan], ValueError),
        (np.array([True]), ValueError),
        ("abc", ValueError),
        ([[0]], ValueError),
        (None, ValueError),
        (object(), ValueError),
    ],
)
def test_bad_free_raises_typed_error_and_changes_nothing(bad, error):
    pool = fkv.BlockPool(num_blocks=6)
    pool.allocate(3)
    pool.incref([0])
    before = snapshot(pool)
    with pytest.raises(error):
        pool.free(bad)
    assert snapshot(pool) == before
    pool.check_invariants()


def test_free_accepts_any_integer_dtype_and_strided_arrays():
    pool = fkv.BlockPool(num_blocks=6)
    pool.allocate(6)
    pool.free(np.array([0, 1], dtype=np.uint8))
    pool.free(np.array([5, 9, 4, 9], dtype=np.int64)[::2])
    pool.free((2,))
    assert pool.num_free_blocks == 5


def test_incref_rejects_free_blocks_and_changes_nothing():
    pool = fkv.BlockPool(num_blocks=4)
    pool.allocate(2)
    before = snapshot(pool)
    with pytest.raises(ValueError, match="block 3"):
        pool.incref([0, 3])
    with pytest.raises(IndexError, match="block id 4"):
        pool.incref([4])
    assert snapshot(pool) == before


@pytest.mark.parametrize("n", [-1, -(2**40)])
def test_negative_counts_raise_value_error(n):
    pool = fkv.BlockPool(num_blocks=4)
    with pytest.raises(ValueError, match="must be >= 0"):
        pool.allocate(n)


@pytest.mark.parametrize("n", [0, -3, 2**31, 2**62])
def test_bad_pool_sizes_raise_value_error(n):
    with pytest.raises(ValueError, match="num_blocks"):
        fkv.BlockPool(num_blocks=n)


def test_wrong_argument_types_raise_type_error():
    pool = fkv.BlockPool(num_blocks=4)
    with pytest.raises(TypeError):
        pool.allocate(1.5)
    with pytest.raises(TypeError):
        pool.allocate("2")
    with pytest.raises(TypeError):
        pool.allocate(2**70)
    with pytest.raises(IndexError):
        pool.ref_count(4)


def test_threads_share_one_pool():
    pool = fkv.BlockPool(num_blocks=128)

    def worker():
        for _ in range(500):
            try:
                ids = pool.allocate(8)
            except fkv.OutOfBlocksError:
                continue
            pool.incref(ids)
            pool.free(ids)
            pool.free(ids)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pool.check_invariants()
    assert pool.num_free_blocks == 128
    stats = pool.stats()
    assert stats["blocks_allocated"] == stats["blocks_freed"]


class PythonPool:
    """The semantics we promise, written plainly: FIFO free list, ref counts, all-or-nothing."""

    def __init__(self, n):
        self.free_list = deque(range(n))
        self.refs = [0] * n

    def allocate(self, n):
        if n > len(self.free_list):
            raise fkv.OutOfBlocksError
        ids = [self.free_list.popleft() for _ in range(n)]
        for i in ids:
            self.refs[i] = 1
        return ids

    def free(self, ids):
        remaining = list(self.refs)
        reached_zero = []
        for i in ids:
            if not 0 <= i < len(self.refs):
                raise IndexError
            if remaining[i] == 0:
                raise ValueError
            remaining[i] -= 1
            if remaining[i] == 0:
                reached_zero.append(i)
        self.free_list.extend(reached_zero)
        self.refs = remaining

    def incref(self, ids):
        for i in ids:
            if not 0 <= i < len(self.refs):
                raise IndexError
            if self.refs[i] == 0:
                raise ValueError
        for i in ids:
            self.refs[i] += 1


NUM_BLOCKS = 12


class PoolMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.pool = fkv.BlockPool(num_blocks=NUM_BLOCKS)
        self.model = PythonPool(NUM_BLOCKS)

    def both(self, op, *args):
        errors = []
        results = []
        for target in (self.pool, self.model):
            try:
                results.append(getattr(target, op)(*args))
                errors.append(None)
            except Exception as e:  # compare the exception types of the two
                results.append(None)
                errors.append(type(e))
        assert errors[0] == errors[1], (op, args, errors)
        return results

    @rule(n=st.integers(0, NUM_BLOCKS + 2))
    def allocate(self, n):
        ours, theirs = self.both("allocate", n)
        if ours is not None:
            assert ours.tolist() == theirs

    @rule(ids=st.lists(st.integers(-1, NUM_BLOCKS), max_size=6))
    def free_arbitrary(self, ids):
        self.both("free", ids)

    @precondition(lambda self: any(self.model.refs))
    @rule(data=st.data())
    def free_held(self, data):
        held = [i for i, r in enumerate(self.model.refs) for _ in range(r)]
        ids = data.draw(st.lists(st.sampled_from(held), max_size=len(held), unique=False))
        self.both("free", ids)

    @rule(ids=st.lists(st.integers(-1, NUM_BLOCKS), max_size=4))
    def incref(self, ids):
        self.both("incref", ids)

    @invariant()
    def observables_match(self):
        self.pool.check_invariants()
        assert self.pool.num_free_blocks == len(self.model.free_list)
        assert self.pool.num_used_blocks == NUM_BLOCKS - len(self.model.free_list)
        assert [self.pool.ref_count(i) for i in range(NUM_BLOCKS)] == self.model.refs


PoolMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)
TestPoolAgainstModel = PoolMachine.TestCase
