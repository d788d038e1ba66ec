"""Waiting that fits the caller: one waiter thread per process for asyncio and gevent.

Who may call: any thread. ``Consumer.read_async`` / ``Consumer.batches`` (asyncio) and
``Consumer.read`` under gevent's monkey-patching wait through this module; a plain
blocking ``read()`` in an ordinary thread does not (it sleeps in ``cm_wait_many`` itself).

Design (docs/ARCHITECTURE.md §9.8). A caller that must not block its thread (an event
loop, a gevent hub) *registers* what it waits for: the state pages of its streams, the
``notify_seq`` values it sampled before reading them (I11), a deadline, a ``notify``
callable and a ``closed`` predicate. One native thread per process (started on the first
registration, gone after LINGER seconds with nothing registered) sleeps in
``cm_wait_many`` on the union of every registration's pages plus one private *kick* word,
and on each return resolves the registrations that are due:

* a page moved past its ``seen`` value, or the consumer was closed  -> ``notify(True)``
* the deadline passed                                                 -> ``notify(False)``

``notify`` runs on the waiter thread and must only hand the result over
(``loop.call_soon_threadsafe``, ``hub.loop.run_callback_threadsafe``); the caller then
reads with ``timeout=0`` in its own thread. I42a: the waiter thread never reads entries
and never touches a Consumer's cursors; it only compares futex words and calls ``notify``.

Re-arming: ``register``/``unregister``/``kick`` bump the kick word and FUTEX_WAKE it. The
thread samples the kick word (under the lock, with the registration list) before it
checks anything, and futex_waitv re-checks every word in the kernel, so a change to the
set is never slept through (the same argument as I11). A registration's pages are
cffi buffer exports held until it is unregistered, so a ``close()`` elsewhere cannot
unmap a page the thread sleeps on (L4); ``Consumer.close()`` kicks the thread, which then
finds the registration closed.

Sets over WAITV_MAX words (futex_waitv's limit) sleep on the first 127 pages and poll the
rest every POLL_SLICE seconds. After fork() the child forgets the parent's waiter (its
thread does not exist there) and starts its own on demand.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import Any, Callable

from ._ffi import ffi, lib
from .errors import check_seconds
from .format import CM_STATE_BYTES, CM_STATE_OFF_NOTIFY_SEQ

__all__ = ["Waiter", "closed_of", "cooperative", "kick", "read_async", "stats", "wait_green"]

log = logging.getLogger("cometmp")

#: futex_waitv's limit (FUTEX_WAITV_MAX, native/notify.c); here the kick word and up to
#: 127 state pages; cometmp.consumer's blocking wait uses it too
WAITV_MAX = 128
#: over WAITV_MAX words, pages past the first 127 are compared this often
POLL_SLICE = 0.01
#: seconds the waiter thread stays with nothing registered before it exits
LINGER = 1.0
#: longest single sleep of read() and read_async: new streams matching the pattern are
#: noticed at least this often (cometmp.consumer uses this one)
DISCOVER_INTERVAL = 0.5


def _native():
    """``(start_new_thread, allocate_lock)`` of the real OS, also under gevent's patching
    (a patched ``_thread`` makes greenlets and gevent locks, which would run the waiter
    inside the hub it must not block)."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("_thread"):
        return (monkey.get_original("_thread", "start_new_thread"),
                monkey.get_original("_thread", "allocate_lock"))
    import _thread
    return _thread.start_new_thread, _thread.allocate_lock


class _Registration:
    __slots__ = ("states", "seen", "deadline", "notify", "closed", "done", "words", "addrs")

    def __init__(self, states, seen, deadline, notify, closed):
        self.states = states          # cffi exports of the state pages (held: L4)
        self.seen = seen              # notify_seq per page, sampled before the read (I11)
        self.deadline = deadline      # time.monotonic() at which notify(False)
        self.notify = notify          # called once, on the waiter thread
        self.closed = closed          # () -> bool: the consumer or its client closed
        self.done = False
        # computed here, in the caller's thread, so the waiter thread's pass over every
        # registration after each wake-up costs one load per page and nothing else
        self.words = [ffi.cast("uint32_t *", p + CM_STATE_OFF_NOTIFY_SEQ) for p in states]
        self.addrs = [int(ffi.cast("uintptr_t", p)) for p in states]


class Waiter:
    """The process's waiter thread and its registrations; see the module docstring.
    Thread safe. Get the process's instance with ``_get()``."""

    def __init__(self) -> None:
        self._start_thread, allocate_lock = _native()
        self._lock = allocate_lock()
        self._regs: list[_Registration] = []
        # a private page with the state page's layout: the thread sleeps on its
        # notify_seq next to the real pages (cm_wait_many counts itself in its
        # `waiters` too, harmlessly)
        self._kick_page = ffi.new("uint8_t[]", CM_STATE_BYTES)
        self._kick_word = ffi.cast("uint32_t *", self._kick_page + CM_STATE_OFF_NOTIFY_SEQ)
        self._running = False
        self.threads_started = 0
        self.wakeups = 0

    # ---- any thread ------------------------------------------------------------------
    def register(self, states: list, seen: list[int], deadline: float,
                 notify: Callable[[bool], Any], closed: Callable[[], bool]) -> _Registration:
        reg = _Registration(list(states), list(seen), deadline, notify, closed)
        with self._lock:
            self._regs.append(reg)
            self._kick_word[0] = (self._kick_word[0] + 1) & 0xFFFFFFFF
            start = not self._running
            if start:
                self._running = True
                self.threads_started += 1
        if start:
            self._start_thread(self._run, ())
        else:
            lib.cm_wake(self._kick_page)
        return reg

    def unregister(self, reg: _Registration) -> None:
        """Forget ``reg`` (resolved or not). A pass of the thread already resolving it may
        still call its ``notify`` once; notifies are made harmless for that (a future
        already done or cancelled is left alone)."""
        with self._lock:
            reg.done = True
            try:
                self._regs.remove(reg)
            except ValueError:
                pass            # resolved by the thread already
        # no kick: the thread drops it from its sleeping set at its next wake-up (another
        # registration's, or LINGER at the latest); until then it only holds the exports

    def kick(self) -> None:
        """Make the thread re-check every registration now (a consumer was closed)."""
        with self._lock:
            self.kick_locked()
        lib.cm_wake(self._kick_page)

    def kick_locked(self) -> None:
        self._kick_word[0] = (self._kick_word[0] + 1) & 0xFFFFFFFF

    def registrations(self) -> int:
        with self._lock:
            return len(self._regs)

    def running(self) -> bool:
        with self._lock:
            return self._running

    # ---- the waiter thread -----------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except BaseException:  # noqa: BLE001 - a bug here must not leave callers asleep
            log.exception("cometmp: waiter thread failed; waking every waiting reader")
            with self._lock:
                regs, self._regs = self._regs, []
                self._running = False      # the next registration starts a new thread
            for reg in regs:
                self._resolve(reg, True)

    def _loop(self) -> None:
        pid = os.getpid()
        idle_since = None
        cache_key = None
        arr: Any = None
        seen_arr: Any = None
        last_kick = None
        slept_until = 0.0
        while True:
            with self._lock:
                if os.getpid() != pid:    # a forked child's copy: never run there
                    return
                kicked = self._kick_word[0]
                regs = list(self._regs)
                now = time.monotonic()
                if not regs:
                    if idle_since is None:
                        idle_since = now
                    elif now - idle_since >= LINGER:
                        self._running = False
                        return
                else:
                    idle_since = None
            due = self._due(regs, now, kicked != last_kick or now >= slept_until)
            last_kick = kicked
            if due:
                for reg, value in due:
                    self._resolve(reg, value)
                continue
            # the union of the pages still waited on, by address (the same page twice
            # has one seen value: two differing ones would have made one registration due)
            deadline = now + LINGER
            taken: set[int] = set()
            pages = []
            for reg in regs:
                if reg.done:            # unregistered since the snapshot
                    continue
                if reg.deadline < deadline:
                    deadline = reg.deadline
                for a, p, s in zip(reg.addrs, reg.states, reg.seen):
                    if a not in taken:
                        taken.add(a)
                        pages.append((a, p, s))
            timeout = deadline - now
            if len(pages) > WAITV_MAX - 1:
                pages = pages[:WAITV_MAX - 1]
                timeout = min(timeout, POLL_SLICE)
            # keyed by address: `regs` holds every page's export (mapped, L4) until the
            # next pass, so an address in the key is the page it was when the array was made
            key = tuple(a for a, _p, _s in pages)
            if key != cache_key:
                arr = ffi.new("void *[]", [self._kick_page] + [p for _a, p, _s in pages])
                seen_arr = ffi.new("uint32_t[]", len(pages) + 1)
                cache_key = key
            seen_arr[0] = kicked
            for i, (_a, _p, s) in enumerate(pages, 1):
                seen_arr[i] = s
            slept_until = now + timeout
            rc = lib.cm_wait_many(arr, seen_arr, len(pages) + 1, max(0, int(timeout * 1e9)))
            self.wakeups += 1
            if rc < 0:
                # nothing a caller did: log it and hand every registration back, so each
                # caller reads (and sees the error there, if it is theirs) and re-registers
                log.error("cometmp: waiter thread: cm_wait_many failed (rc %d); "
                          "waking every waiting reader", rc)
                for reg in regs:
                    self._resolve(reg, True)
                time.sleep(POLL_SLICE)

    @staticmethod
    def _due(regs: list[_Registration], now: float,
             check_closed: bool = True) -> list[tuple[_Registration, bool]]:
        """The registrations to resolve now. ``check_closed`` only after a kick or a
        timeout: close() kicks (Consumer.close) and a client's close is found by the
        caller's next read, so a wake-up by an append need not ask every consumer."""
        due = []
        for reg in regs:
            if reg.done:
                continue
            words, seen = reg.words, reg.seen
            if len(words) == 1:
                moved = words[0][0] != seen[0]
            else:
                moved = any(w[0] != s for w, s in zip(words, seen))
            if not moved and check_closed:
                try:
                    moved = reg.closed()
                except Exception:  # noqa: BLE001 - a broken predicate: let the caller find out
                    moved = True
            if moved:
                due.append((reg, True))
            elif reg.deadline <= now:
                due.append((reg, False))
        return due

    def _resolve(self, reg: _Registration, value: bool) -> None:
        with self._lock:
            if reg.done:
                return
            reg.done = True
            try:
                self._regs.remove(reg)
            except ValueError:
                pass
        try:
            reg.notify(value)
        except Exception:  # noqa: BLE001 - a notify must not kill the process's waiter
            log.exception("cometmp: waiter thread: a notify callback failed")


_waiter: Waiter | None = None


def _get() -> Waiter:
    global _waiter
    w = _waiter
    if w is None:
        w = _waiter = Waiter()
    return w


def _forget_after_fork() -> None:
    global _waiter
    _waiter = None      # the thread is the parent's; the child starts its own on demand


os.register_at_fork(after_in_child=_forget_after_fork)


def kick() -> None:
    """Called by ``Consumer.close()``: the waiter re-checks its registrations now."""
    w = _waiter
    if w is not None:
        w.kick()


def stats() -> dict:
    """This process's waiter: ``registrations`` now, whether its thread is ``running``,
    how many threads it ever started and how often the thread woke."""
    w = _waiter
    if w is None:
        return {"registrations": 0, "running": False, "threads_started": 0, "wakeups": 0}
    return {"registrations": w.registrations(), "running": w.running(),
            "threads_started": w.threads_started, "wakeups": w.wakeups}


def closed_of(consumer) -> Callable[[], bool]:
    return lambda: consumer._closed or consumer.client._closed


# ---- asyncio -------------------------------------------------------------------------------

def _set_result(fut: asyncio.Future, value: bool) -> None:
    if not fut.done():
        fut.set_result(value)


def _loop_notify(loop: asyncio.AbstractEventLoop, fut: asyncio.Future) -> Callable[[bool], None]:
    def notify(value: bool) -> None:
        try:
            loop.call_soon_threadsafe(_set_result, fut, value)
        except RuntimeError:
            pass        # the loop was closed under the wait: nobody is waiting any more
    return notify


async def read_async(consumer, pattern: str, max_messages: int, timeout: float | None, *,
                     zero_copy: bool | None, assignment) -> Any:
    """``Consumer.read_async``: read() with ``timeout=0`` in the loop's thread, and in
    between, await the waiter thread's word that a stream moved (or the slice ended)."""
    check_seconds("timeout", timeout)
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else time.monotonic() + timeout
    # the first read validates the arguments and claims the group (I14)
    batch = consumer.read(pattern, max_messages, 0, zero_copy=zero_copy, assignment=assignment)
    if len(batch) or timeout == 0:
        return batch
    idle = False
    while True:
        # ClosedError once closed (L4); pages and their notify_seq before the read (I11)
        states, seen = consumer._wait_point(pattern, assignment, idle)
        batch = consumer.read(pattern, max_messages, 0, zero_copy=zero_copy,
                              assignment=assignment)
        now = time.monotonic()
        if len(batch) or (deadline is not None and now >= deadline):
            break
        left = DISCOVER_INTERVAL if deadline is None else min(deadline - now, DISCOVER_INTERVAL)
        if states is None:     # readonly client, no stream yet, a page not mapped: poll
            await asyncio.sleep(min(left, consumer.poll_interval))
            idle = True
            continue
        fut = loop.create_future()
        w = _get()
        reg = w.register(states, seen, now + left, _loop_notify(loop, fut), closed_of(consumer))
        try:
            idle = not await fut
        finally:
            w.unregister(reg)
    return batch


# ---- gevent --------------------------------------------------------------------------------

def cooperative() -> bool:
    """Whether a blocking wait in this process would stall a gevent hub: gevent has
    monkey-patched ``time`` or ``threading`` (what ``patch_all()`` and gunicorn's gevent
    worker do). Never imports gevent."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and (monkey.is_module_patched("time")
                                   or monkey.is_module_patched("threading"))


def wait_green(states: list, seen: list[int], timeout: float,
               closed: Callable[[], bool]) -> bool:
    """``Consumer._wait`` under gevent: the calling greenlet sleeps until a page moves
    past ``seen``, ``closed()`` or ``timeout``; the hub runs other greenlets meanwhile.
    True if woken by a page or a close."""
    import gevent
    from gevent.event import Event

    hub = gevent.get_hub()
    done = Event()
    result: list[bool] = []

    def notify(value: bool) -> None:
        result.append(value)
        hub.loop.run_callback_threadsafe(done.set)

    w = _get()
    reg = w.register(states, seen, time.monotonic() + timeout, notify, closed)
    try:
        done.wait()
    finally:
        w.unregister(reg)
    return bool(result and result[0])
