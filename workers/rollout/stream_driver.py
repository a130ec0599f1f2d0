"""Runs a RequestStream (workers/rollout/streaming.py) in a thread of its own on a rollout worker.

The driver's calls only queue prompts and take finished groups, so they return at once (or after a bounded
wait for results) while the engine keeps decoding. Only this thread touches the engine: new weights stay in
the mailbox until the stream takes them between two steps, so no step ever sees two versions. An error in
the thread ends the stream and is raised by the next call, naming the worker.
"""
from __future__ import annotations

import contextlib
import queue
import threading
import time

from workers.rollout.base import SamplingParams
from workers.rollout.streaming import FinishedGroup, GroupRequest, RequestStream
from workers.rollout.weight_updates import WeightMailbox

IDLE_WAIT_S = 0.02  # longest an idle stream waits for prompts before looking at its mailbox and stop flag


class StreamDriver:
    def __init__(self, engine: RequestStream, mailbox: WeightMailbox | None, name: str) -> None:
        self.engine, self.mailbox, self.name = engine, mailbox, name
        self._inbox: queue.Queue[list[GroupRequest]] = queue.Queue()
        self._done: list[FinishedGroup] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, params: SamplingParams) -> None:
        if self.running:
            raise RuntimeError(f"{self.name}: a stream is already running")
        self._stop.clear()
        self._error = None
        self.engine.start_stream(params, self.mailbox)
        self._thread = threading.Thread(target=self._loop, name=f"{self.name}-stream", daemon=True)
        self._thread.start()

    def submit(self, requests: list[GroupRequest]) -> None:
        self._check()
        self._inbox.put(list(requests))

    def collect(self, min_groups: int, timeout_s: float) -> list[FinishedGroup]:
        """Finished groups; waits (at most timeout_s) until there are at least min_groups."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while len(self._done) < min_groups and self._error is None and self.running:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            out, self._done = self._done, []
        if not out:
            self._check()
        return out

    def stop(self) -> list[str]:
        """End the stream; the request ids it dropped (waiting or running), for the trainer to regenerate."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            if self._thread.is_alive():
                raise RuntimeError(f"{self.name}: the stream thread did not stop within 60 s")
        self._thread = None
        while not self._inbox.empty():
            self.engine.add(self._inbox.get_nowait())
        return self.engine.end_stream()

    def _check(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"{self.name}: the generation stream failed: {self._error!r}") from self._error

    def _loop(self) -> None:
        # while the stream runs, deliveries wait in the mailbox for the stream to take them between steps
        generating = self.mailbox.generating() if self.mailbox is not None else contextlib.nullcontext()
        try:
            with generating:
                while not self._stop.is_set():
                    while not self._inbox.empty():
                        self.engine.add(self._inbox.get_nowait())
                    if not self.engine.pending():
                        if self.mailbox is not None and self.mailbox.ready():
                            self.mailbox.poll()
                        try:  # idle: wake for the next prompts, or to look at the mailbox and the stop flag
                            self.engine.add(self._inbox.get(timeout=IDLE_WAIT_S))
                        except queue.Empty:
                            pass
                        continue
                    finished = self.engine.step()
                    if finished:
                        with self._cond:
                            self._done.extend(finished)
                            self._cond.notify_all()
        except BaseException as exc:  # surfaced by the next submit/collect
            self._error = exc
        finally:
            with self._cond:
                self._cond.notify_all()
