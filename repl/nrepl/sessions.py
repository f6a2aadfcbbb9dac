"""nREPL sessions: each has its own `*1 *2 *3 *e`, stdin, and a worker thread evaluating its
requests in order, so a looping session does not stop the others; `interrupt` raises
KeyboardInterrupt in the worker (as Ctrl-C does at the console).

An exception sent to a thread lands at its next Python instruction, so a worker blocked in C
(`time.sleep`, a blocking socket read) would keep its session waiting until that call returns.
When an interrupted evaluation has not stopped within `INTERRUPT_GRACE` seconds, the session
lets go of it (`abandon`): the evaluation is answered `interrupted` and `done`, a new worker
takes the session's next requests, and the old thread, muted, stops at its next instruction
once the C call returns (the interrupt stays pending there), so nothing after it runs.
"""

from __future__ import annotations

import ctypes
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from repl.nrepl.transport import Connection
from repl.session import ResultSlots

__all__ = ["INTERRUPT_GRACE", "Job", "NreplSession"]

INTERRUPT_GRACE = 0.5  # seconds an interrupted evaluation has to stop before it is abandoned


@dataclass
class Job:
    """One eval or load-file request being worked on, and where its replies go."""

    request: dict[str, Any]
    connection: Connection
    session: NreplSession
    abandoned: bool = False  # answered already (interrupted while blocked): say nothing more

    def reply(self, message: dict[str, Any]) -> None:
        if not self.abandoned:
            self.connection.reply(self.request, message, self.session.id)


@dataclass
class NreplSession:
    """One nREPL session: its own `*1 *2 *3 *e`, stdin and worker thread."""

    id: str
    server: Any  # the repl.nrepl.server.Server: evaluates the jobs (`evaluate`)
    client: str | None = None  # the editor family, from clone's client-name
    ephemeral: bool = False
    slots: ResultSlots = field(default_factory=ResultSlots)
    jobs: queue.Queue[Job | None] = field(default_factory=queue.Queue)
    running: Job | None = None
    thread_id: int | None = None
    stdin: str = ""
    stdin_closed: bool = False
    waiting_for_input: bool = False
    closed: bool = False
    lock: threading.Condition = field(default_factory=threading.Condition)
    worker: threading.Thread | None = None

    def submit(self, job: Job) -> None:
        with self.lock:
            if self.worker is None:
                self._start_worker()
        self.jobs.put(job)

    def _start_worker(self) -> None:
        """A new worker thread for this session's requests (called holding the lock)."""
        worker = threading.Thread(
            target=self._work, name=f"nrepl-session-{self.id[:8]}", daemon=True
        )
        self.worker = worker
        worker.start()

    def _work(self) -> None:
        me = threading.current_thread()
        while self.worker is me:
            try:
                job = self.jobs.get()
            except KeyboardInterrupt:
                continue  # an interrupt that came as the last evaluation ended
            if job is None:
                return
            if self.worker is not me:  # abandoned while idle between jobs: hand this one on
                self.jobs.put(job)
                return
            try:
                self.server.evaluate(job)
            except BaseException as e:  # a stray interrupt or a bug: the worker goes on
                job.reply({"err": f"hyops nrepl: {type(e).__name__}: {e}\n"})
                job.reply({"status": ["error", "server-error", "done"]})
            if self.ephemeral:
                return

    @contextmanager
    def evaluating(self, job: Job) -> Iterator[None]:
        """Mark `job` as running in this thread, so `interrupt` may raise in it; afterwards no
        interrupt can land any more (a pending one is withdrawn)."""
        with self.lock:
            self.running, self.thread_id = job, threading.get_ident()
        try:
            yield
        finally:
            while True:
                try:
                    with self.lock:
                        if self.running is job:  # not if abandoned: another job may run now
                            self.running = None
                        _raise_in_thread(threading.get_ident(), None)
                        self.lock.notify_all()
                    break
                except KeyboardInterrupt:
                    # An interrupt sent as the evaluation ended: it has nothing left to stop,
                    # and must not stay set, or a later interrupt would hit an idle worker.
                    continue

    def interrupt(self, interrupt_id: Any = None) -> str:
        """Interrupt the running evaluation: "interrupted", "session-idle", "mismatch", or
        "busy" when it could not be sent safely (see `_raise_in_thread`)."""
        with self.lock:
            job = self.running
            if job is None:
                return "session-idle"
            if interrupt_id is not None and interrupt_id != job.request.get("id"):
                return "mismatch"
            if not _raise_in_thread(self.thread_id, KeyboardInterrupt):
                return "busy"
            self.lock.notify_all()
            return "interrupted"

    def settle_interrupt(self, grace: float = INTERRUPT_GRACE) -> bool:
        """After `interrupt`: wait up to `grace` seconds for the evaluation to stop; if it has
        not (blocked in C), abandon it: answer it `interrupted` and `done` now, and give the
        session a new worker so its next requests run at once. True if it was abandoned."""
        deadline = time.monotonic() + grace
        with self.lock:
            job = self.running
            while self.running is job and job is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.lock.wait(left)
            if job is None or self.running is not job:
                return False
            job.abandoned = True
            self.running, self.thread_id = None, None
            self._start_worker()
        # Sent from here: the abandoned thread is muted, and may stay blocked for long.
        for status in (["interrupted"], ["done"]):
            job.connection.reply(job.request, {"status": status}, self.id)
        return True

    def give_input(self, text: str) -> None:
        with self.lock:
            if text:
                self.stdin += text
            else:
                self.stdin_closed = True
            self.lock.notify_all()

    def read_line(self, job: Job) -> str:
        """One line of stdin for an evaluation; asks the editor (need-input) when there is none.

        Waits in short slices so that an interrupt lands; "" (end of file) after an empty
        `stdin` request or when the session is closed.
        """
        asked = False
        with self.lock:
            self.waiting_for_input = True
            try:
                while "\n" not in self.stdin and not self.stdin_closed and not self.closed:
                    if not asked:
                        job.reply({"status": ["need-input"]})
                        asked = True
                    self.lock.wait(0.1)
            finally:
                self.waiting_for_input = False
            if "\n" in self.stdin:
                line, self.stdin = self.stdin.split("\n", 1)
                return line + "\n"
            line, self.stdin, self.stdin_closed = self.stdin, "", False
            return line

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.lock.notify_all()
        self.interrupt()
        self.jobs.put(None)


def _raise_in_thread(thread_id: int | None, exc: type[BaseException] | None) -> bool:
    """Raise `exc` in another thread at its next bytecode (None withdraws a pending one).

    False if it could not be sent safely within a second. CPython 3.11 gives a thread that is
    being started the ident of the thread starting it until it runs, and SetAsyncExc picks the
    newest match: an interrupt sent while the evaluation starts a thread (the Session's loop,
    a pool) would kill the new thread and leave the evaluation waiting for it forever. So it
    is sent only while no thread is starting (threading's `_limbo` is empty), holding the lock
    that any `Thread.start()` needs first.
    """
    if thread_id is None:
        return False
    deadline = time.monotonic() + 1
    while True:
        with threading._active_limbo_lock:  # type: ignore[attr-defined]
            if not threading._limbo:  # type: ignore[attr-defined]
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc is not None else None
                )
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
