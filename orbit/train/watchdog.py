"""Find a dead or hung rank and end the whole job within a bounded time, naming that rank.

Without this, one lost rank leaves the others blocked in a collective until the process-group
timeout (often much longer than anyone wants to pay for on thousands of GPUs), and their errors
("connection reset by peer") never say which rank failed.

Design (cheap: one store write and two reads per rank per interval, `interval = timeout / 5`):
- Every rank runs a daemon thread that publishes a heartbeat into a small TCPStore hosted by rank 0:
  a beat counter, the rank's training progress (`Progress`, marked by the trainer at fixed points of
  every step, in eval and in checkpoint saves, the same sequence on every rank), and where its main
  thread is (innermost Python frame, and whether that frame is inside torch.distributed, i.e. the
  rank waits for the others).
- Rank 0's thread watches everyone; every other rank watches rank 0. Verdicts:
  * dead: a rank's beat has not advanced for `timeout_s` (its process or host is gone), or it left
    training with an exception (its last heartbeat says so), or rank 0's store is unreachable;
  * hung: no rank's progress advanced for `timeout_s` and some ranks are behind the others, or, when
    all are at the same point of a training step, some wait in a collective while others do not
    (the ones that do not are stuck elsewhere: data loading, I/O, a bug).
  Eval and checkpoint phases are exempt from the second hung rule (one rank may legitimately work
  alone there, e.g. rank 0 publishing a checkpoint); all ranks at one point inside collectives is a
  deadlock the process-group timeout (`parallel.timeout_s`) ends.
- Rank 0 writes the verdict into the store; every rank prints it to stderr (the hung rank also dumps
  its main thread's stack) and leaves with `os._exit(PEER_FAILURE_EXIT_CODE)`, because its main
  thread may be blocked inside a collective. A main thread whose collective fails (a peer's
  connection closed) waits for the verdict instead of dying with an anonymous socket error.
"""
from __future__ import annotations

import datetime as dt
import faulthandler
import json
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch.distributed as dist

from orbit.train.logging import log

PEER_FAILURE_EXIT_CODE = 76  # sysexits EX_PROTOCOL: a remote peer failed
_COMM_DIR = str(Path(dist.__file__).parent)  # frames in here wait for (or talk to) other ranks
_VERDICT_KEY = "verdict"
_EXEMPT_PHASES = ("eval", "checkpoint", "setup")


@dataclass
class Progress:
    """How far this rank got, marked by the trainer; read by the watchdog thread.

    `count` grows by one at every mark, and every rank marks the same sequence, so a rank with a
    smaller count than another is behind it. `phase` is "setup", "train", "eval" or "checkpoint".
    """

    count: int = 0
    step: int = 0
    phase: str = "setup"

    def mark(self, step: int, phase: str = "train") -> None:
        self.step, self.phase = step, phase
        self.count += 1


@dataclass
class Heartbeat:
    """One rank's published state. `state` is "running", "done" or "exited: <reason>"."""

    beat: int
    progress: int
    step: int
    phase: str
    where: str
    in_comm: bool
    host: str
    state: str = "running"

    def encode(self) -> bytes:
        return json.dumps(self.__dict__).encode()

    @classmethod
    def decode(cls, raw: bytes) -> "Heartbeat":
        return cls(**json.loads(raw))


@dataclass
class _Seen:
    """What the monitor last saw of a rank, by its own clock (no clock sync between hosts needed)."""

    beat: int = -1
    beat_time: float = 0.0


def main_thread_location() -> tuple[str, bool]:
    """('file:line in function' of the main thread's innermost Python frame, whether it is inside
    torch.distributed)."""
    frame = sys._current_frames().get(threading.main_thread().ident)
    if frame is None:
        return "unknown", False
    code = frame.f_code
    short = "/".join(Path(code.co_filename).parts[-3:])
    return f"{short}:{frame.f_lineno} in {code.co_name}", code.co_filename.startswith(_COMM_DIR)


def is_communication_error(err: BaseException) -> bool:
    """An error raised by a collective or the store because another rank went away."""
    return isinstance(err, dist.DistError) or (isinstance(err, RuntimeError) and "gloo" in str(err))


def diagnose(beats: dict[int, Heartbeat], beat_age_s: dict[int, float], stalled_s: float,
             timeout_s: float) -> str | None:
    """The verdict on the job from every rank's last heartbeat (None: nothing wrong yet).

    `beat_age_s[r]`: seconds since rank r's beat last advanced; `stalled_s`: seconds since any
    rank's progress last advanced.
    """
    running = {r: b for r, b in beats.items() if b.state == "running"}
    if not running:
        return None
    for rank, beat in sorted(beats.items()):
        if beat.state.startswith("exited"):
            return (f"rank {rank} ({beat.host}) left training at step {beat.step} while the others were still "
                    f"running: {beat.state.removeprefix('exited: ')}")
    for rank, beat in sorted(running.items()):
        if beat_age_s[rank] >= timeout_s:
            return (f"rank {rank} ({beat.host}) is dead: last heartbeat {beat_age_s[rank]:.0f} s ago, at step "
                    f"{beat.step} ({beat.phase}); its process or host is gone")
    if stalled_s < timeout_s or any(beat_age_s[r] > timeout_s / 2 for r in running):
        return None  # a late heartbeat may be a dying rank: judge that first
    ahead = max(b.progress for b in running.values())
    suspects = [r for r, b in running.items() if b.progress < ahead]
    reason = "behind the others"
    if not suspects and not any(b.phase in _EXEMPT_PHASES for b in running.values()):
        if any(b.in_comm for b in running.values()):
            suspects = [r for r, b in running.items() if not b.in_comm]
            reason = "outside any collective while the others wait in one"
    if not suspects:
        return None
    waiting = next(b for b in running.values() if b.progress == ahead)
    named = "; ".join(f"rank {r} ({running[r].host}) stuck at step {running[r].step} ({running[r].phase}) in "
                      f"{running[r].where}" for r in sorted(suspects))
    return (f"hung: {named} -- no progress for {stalled_s:.0f} s, {reason} (they are at step {waiting.step}, "
            f"{waiting.where})")


def _ranks_named(verdict: str) -> set[int]:
    words = verdict.replace("(", " ").split()
    return {int(words[i + 1]) for i, w in enumerate(words[:-1]) if w == "rank" and words[i + 1].isdigit()}


@dataclass
class Watchdog:
    """Context manager around the part of a run where every rank must keep up (see module doc).

    Build it on every rank after the process group exists (it creates the heartbeat store on rank 0
    and a barrier); on one process it does nothing.
    """

    progress: Progress
    timeout_s: float
    master_addr: str | None = None
    rank: int = field(init=False, default=0)
    world_size: int = field(init=False, default=1)

    def __post_init__(self):
        if self.timeout_s <= 0:
            raise ValueError(f"heartbeat timeout must be positive seconds (parallel.heartbeat_timeout_s), "
                             f"got {self.timeout_s}")
        self.interval_s = self.timeout_s / 5
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._beat = 0
        self._awaiting = False
        self._host = socket.gethostname()
        self._seen: dict[int, _Seen] = {}
        self._last_progress: tuple[tuple[int, ...], float] = ((), time.monotonic())

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> "Watchdog":
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self._store = self._connect()
        self._publish("running")
        dist.barrier()  # every rank's first heartbeat exists before anyone reads them
        self._thread = threading.Thread(target=self._run, name="orbit-watchdog", daemon=True)
        self._thread.start()
        return self

    def _connect(self) -> dist.TCPStore:
        """A store of our own on rank 0 (port chosen by the OS), so losing rank 0 means losing it."""
        timeout = dt.timedelta(seconds=self.timeout_s)
        host = self.master_addr or os.environ.get("MASTER_ADDR") or socket.gethostname()
        server = dist.TCPStore(host, 0, self.world_size, is_master=True, wait_for_workers=False,
                               timeout=timeout) if self.rank == 0 else None
        box = [server.port if server is not None else None]
        dist.broadcast_object_list(box, src=0)
        self.address = f"{host}:{box[0]}"
        if server is not None:
            return server
        return dist.TCPStore(host, box[0], self.world_size, is_master=False, timeout=timeout)

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._thread is None:
            return False
        if exc is not None and is_communication_error(exc):
            self._await_verdict(exc)  # normally never returns: the thread ends the process
        self._stop.set()
        self._thread.join()
        try:
            if exc is None or isinstance(exc, SystemExit):
                self._publish("done")
                self._store.add("stopped", 1)
                if self.rank == 0:  # the store lives in this process: keep it until everyone stopped reading it
                    self._wait_for_count("stopped", self.world_size)
            else:
                self._publish(f"exited: {type(exc).__name__}: {exc}")
                if self.rank == 0:  # nobody else watches everyone: announce our own failure
                    self._announce(f"rank 0 ({self._host}) left training at step {self.progress.step}: "
                                   f"{type(exc).__name__}: {exc}")
        except Exception as err:  # noqa: BLE001 - rank 0's store is gone; the exception in flight matters more
            log.warning("rank %d: could not report to the watchdog store (%s)", self.rank, err)
        return False

    def _await_verdict(self, err: BaseException) -> None:
        log.error("rank %d: a collective failed (%s); waiting up to %.0f s for the watchdog to name the "
                  "failed rank", self.rank, str(err).splitlines()[0][:200], self.timeout_s + 3 * self.interval_s)
        self._awaiting = True
        self._stop.wait(self.timeout_s + 3 * self.interval_s)

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._publish("running")
                if self._store.check([_VERDICT_KEY]):
                    self._obey(self._store.get(_VERDICT_KEY).decode())
                verdict = self._monitor_all() if self.rank == 0 else self._monitor_rank0()
            except Exception as err:  # noqa: BLE001 - any store failure means rank 0's store is gone
                if self._stop.is_set():
                    return
                verdict = (f"rank 0 is unreachable: lost the heartbeat store it hosts at {self.address} "
                           f"({type(err).__name__}: {err}); rank 0 died or its host is down")
                self._report_and_exit(verdict)
            if verdict is not None and not self._stop.is_set():
                self._announce(verdict)
                self._report_and_exit(verdict)

    def _publish(self, state: str) -> None:
        where, in_comm = main_thread_location()
        in_comm = in_comm or self._awaiting  # a failed collective: this rank waits for the others too
        self._beat += 1
        beat = Heartbeat(self._beat, self.progress.count, self.progress.step, self.progress.phase, where, in_comm,
                         self._host, state)
        self._store.set(f"hb/{self.rank}", beat.encode())

    def _read_all(self) -> dict[int, Heartbeat]:
        raw = self._store.multi_get([f"hb/{r}" for r in range(self.world_size)])
        return {r: Heartbeat.decode(value) for r, value in enumerate(raw)}

    def _ages(self, beats: dict[int, Heartbeat] | None = None) -> dict[int, float]:
        now = time.monotonic()
        for rank, beat in (beats or {}).items():
            seen = self._seen.setdefault(rank, _Seen(beat_time=now))
            if beat.beat != seen.beat:
                seen.beat, seen.beat_time = beat.beat, now
        return {rank: now - seen.beat_time for rank, seen in self._seen.items()}

    def _monitor_all(self) -> str | None:
        beats = self._read_all()
        ages = self._ages(beats)
        progress = tuple(b.progress for b in beats.values())
        now = time.monotonic()
        if progress != self._last_progress[0]:
            self._last_progress = (progress, now)
        return diagnose(beats, ages, now - self._last_progress[1], self.timeout_s)

    def _monitor_rank0(self) -> str | None:
        beat = Heartbeat.decode(self._store.get("hb/0"))
        age = self._ages({0: beat})[0]
        if beat.state == "running" and age >= self.timeout_s:
            return diagnose({0: beat}, {0: age}, 0.0, self.timeout_s)
        return None

    def _announce(self, verdict: str) -> None:
        """Rank 0 (or whoever found rank 0 dead) tells everyone; rank 0 waits until the others have
        read it, since its exit takes the store down."""
        try:
            self._store.set(_VERDICT_KEY, verdict.encode())
            if self.rank == 0:
                ages = self._ages()
                alive = [r for r, b in self._read_all().items()
                         if r != 0 and b.state == "running" and ages.get(r, 0.0) < self.timeout_s / 2]
                self._wait_for_count("acks", len(alive))
        except Exception:  # noqa: BLE001 - the store is gone; the verdict is printed below anyway
            pass

    def _obey(self, verdict: str) -> None:
        try:
            self._store.add("acks", 1)
        finally:
            self._report_and_exit(verdict)

    def _wait_for_count(self, key: str, expected: int) -> None:
        deadline = time.monotonic() + 2 * self.interval_s + 1.0
        while self._store.add(key, 0) < expected and time.monotonic() < deadline:
            time.sleep(0.05)

    def _report_and_exit(self, verdict: str) -> None:
        print(f"[orbit watchdog, rank {self.rank}] stopping the job: {verdict}", file=sys.stderr, flush=True)
        if self.rank in _ranks_named(verdict):
            print(f"[orbit watchdog, rank {self.rank}] this rank is the one named; its threads:", file=sys.stderr,
                  flush=True)
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        os._exit(PEER_FAILURE_EXIT_CODE)
