"""``fusion.kernels.launch``: a loop body over task indices on Numba's thread pool."""

import numba
import numpy as np
import pytest
from numba.core.errors import TypingError
from numpy.lib.stride_tricks import as_strided

from fusion.kernels.launch import tasks


@tasks
def _record(first, last, values, y, threads):
    """``y[task // 4, 0, task % 4] = values[task]`` and which thread ran the task."""
    for task in range(first, last):
        y[task // 4, 0, task % 4] = values[task]
        threads[task] = numba.get_thread_id()


def test_every_task_writes_into_the_callers_array_even_with_odd_strides_on_a_unit_axis():
    # NumPy calls this array C-contiguous whatever the stride of its unit axis; a body indexes it by its shape
    base = np.zeros(12)
    y = as_strided(base, shape=(3, 1, 4), strides=(32, 8 * 1000, 8))
    assert y.flags.c_contiguous
    values = np.arange(1.0, 13.0)
    _record(12, values, y, np.empty(12, np.int64))
    np.testing.assert_array_equal(base, values)


def test_no_task_runs_when_there_are_none():
    y = np.zeros((1, 1, 4))
    _record(0, np.ones(4), y, np.empty(4, np.int64))
    assert not y.any()


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two threads")
def test_the_tasks_run_on_the_callers_thread_count():
    y, values = np.zeros((1, 1, 4)), np.ones(4)
    threads = np.empty(4, np.int64)
    saved = numba.get_num_threads()
    try:
        numba.set_num_threads(2)
        _record(4, values, y, threads)
        # a share each, in order: tasks 0 and 1 on one thread, 2 and 3 on the other
        assert threads[0] == threads[1] != threads[2] == threads[3], threads
        numba.set_num_threads(1)
        _record(4, values, y, threads)
        assert len(set(threads)) == 1, threads
    finally:
        numba.set_num_threads(saved)


def test_an_operand_that_is_not_an_array_is_refused():
    with pytest.raises(TypeError, match="_record: every operand must be an array"):
        _record(1, np.ones(1), [1.0, 2.0], np.empty(1, np.int64))


def test_an_operand_the_loop_cannot_index_by_its_shape_is_refused():
    with pytest.raises(TypingError, match="operand 1 must be a C-contiguous array"):
        _record(1, np.ones(1), np.zeros((3, 1, 8))[:, :, ::2], np.empty(1, np.int64))
