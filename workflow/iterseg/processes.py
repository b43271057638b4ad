"""No process of ours outlives the step that started it, however that step dies (``kill -9`` too).

A process killed by SIGKILL runs no handler, ``atexit`` or ``finally``: the children it leaves
must notice on their own. Two kinds did not:

- nnU-Net's data-loader workers (batchgenerators' ``NonDetMultiThreadedAugmenter``, forked by
  ``multiprocessing``) loop on a full queue until an event their dead parent would have set;
- the spawned workers of a ``ProcessPoolExecutor`` (``iterseg convert --jobs N``) each hold both
  ends of the call queue's pipe, so they never read end-of-file.

Linux can do it for them: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` in the child. The catch, from
``prctl(2)``: the signal comes when the *thread* that created the child exits, not the process.
Where our steps create processes (checked for nnunetv2 2.8.1, batchgenerators 0.25.5,
Python 3.11):

- nnU-Net forks its data-loader workers on the first ``next()`` of each augmenter, in
  ``get_dataloaders`` from ``on_train_start``: the main thread, which lives as long as the
  process. The augmenter's ``results_loop`` thread only moves batches; it never forks.
- A spawn-context ``ProcessPoolExecutor`` starts its workers in ``submit`` (the caller's
  thread, ``_run_pairs`` runs in the main thread) and replaces dead ones from its manager
  thread, which lives until the pool is shut down, i.e. longer than any of its workers.
- Our own threads (``convert_case``'s writer, ``nifti``'s gzip threads, nnU-Net's
  sliding-window producer in ``predict_single_npy_array``) never create processes.
  ``subprocess`` (``nvidia-smi``, dcmqi in the demo) runs no Python at-fork hook without
  ``preexec_fn``, so those programs are left alone; they are waited for anyway.

So a process must never be forked from a short-lived thread while these hooks are on: it
would be killed when that thread ends. nnU-Net's spawn pools (plan's preprocessing, the final
validation's export) run no at-fork hook and are left as they are: a ``multiprocessing.Pool``
worker closes its copy of the result pipe's read end, so once the parent is gone it dies of a
broken pipe when it reports its current chunk of tasks. The data-parallel workers of
``--num-gpus N`` are spawned by ``torch.multiprocessing``, which sets their death signal
(SIGINT) itself; their own data-loader workers are forked without our hook.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # linux/prctl.h

_libc: ctypes.CDLL | None = None
_hooked_in: int | None = None  # pid of the process whose forks die with it (inherited by forks)
_forking_pid = 0  # set right before each fork: the child's parent, as the child must compare it


def _prctl() -> ctypes.CDLL:
    """libc, loaded once in the parent: ``dlopen`` in the child of a threaded process can deadlock."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return _libc


def die_with_parent(parent_pid: int) -> None:
    """Have Linux SIGKILL this process as soon as its parent dies.

    To be called in the child, first thing after fork or spawn. A parent that died before the
    call sends no signal any more (the child has been re-parented already), so the child then
    kills itself at once.

    Parameters
    ----------
    parent_pid
        The parent's pid, recorded in the parent before the fork or spawn.

    """
    if not sys.platform.startswith("linux"):
        logger.debug("not on Linux: process %d will not follow its parent %d", os.getpid(), parent_pid)
        return
    if _prctl().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        logger.warning(
            "process %d: prctl(PR_SET_PDEATHSIG) failed (%s); it may outlive its parent %d",
            os.getpid(),
            os.strerror(ctypes.get_errno()),
            parent_pid,
        )
        return
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGKILL)


def _before_fork() -> None:
    global _forking_pid
    _forking_pid = os.getpid()


def _after_fork_in_child() -> None:
    global _hooked_in
    _hooked_in = os.getpid()
    die_with_parent(_forking_pid)


def children_die_with_us() -> None:
    """Make every process forked from now on by this one (and by those, in turn) die with its parent.

    Registers :func:`die_with_parent` as an at-fork hook, once per process: forked children
    inherit the hook, so calling this again there changes nothing. Spawned children start a new
    interpreter without the hook; give their pool :func:`die_with_parent_initializer`.
    Only for processes forked from a thread that lives as long as they do (see the module's
    documentation): the signal comes when the forking thread exits.
    """
    global _hooked_in
    if _hooked_in is not None:
        return
    _hooked_in = os.getpid()
    if not sys.platform.startswith("linux"):
        logger.debug("not on Linux: child processes may outlive a killed parent")
        return
    _prctl()
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
    logger.debug("process %d: its forked children die with it", os.getpid())


def die_with_parent_initializer(parent_pid: int) -> None:
    """``initializer`` of a spawn-context process pool: the worker dies with ``parent_pid``.

    Use as ``ProcessPoolExecutor(n, mp_context=get_context("spawn"),
    initializer=die_with_parent_initializer, initargs=(os.getpid(),))``. Processes the worker
    forks die with it in turn.

    Parameters
    ----------
    parent_pid
        ``os.getpid()`` of the process creating the pool.

    """
    die_with_parent(parent_pid)
    children_die_with_us()
