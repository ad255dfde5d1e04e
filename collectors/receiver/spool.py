"""The receivers' spool: every accepted message on local disk before the client hears 200.

With the embedded broker (memory-only, :mod:`observer.core.broker`) an acknowledgement from
Kafka survives nothing, so in durable mode (``kafka.embedded_durable``) the receivers also
append each request's acknowledged messages (topic, partition, offset, key, value, headers)
to this spool and wait for ``fsync`` before answering: the OpenTelemetry Collector's
persistent-queue pattern. One writer thread serves every waiting request with one ``write``
and one ``fsync`` (group commit), so concurrent requests share the disk flush.

On disk: segment files ``{seq:012d}.seg`` of records (:mod:`observer.collectors.receiver.spool_records`:
length, CRC, lz4-compressed payload; a spool that holds minutes of traffic while trace
grouping holds traces takes several times less disk). A torn or corrupt tail (a crash
mid-write, never acknowledged) is dropped at :meth:`Spool.open`. ``meta.json`` (replaced atomically)
holds ``base``, the first segment still valid (a replay rewrites the spool into a new
segment and then moves ``base`` past the old ones), and ``settled``: per consumer group that
reads a received topic, the offsets below which it has settled that topic's entries
(:mod:`observer.core.settle`). An entry is settled once every group reading its topic has
settled it: segments of settled entries only are deleted, and :meth:`Spool.pending` skips
settled entries in the others. :meth:`Spool.watermarks` tells a replay where each group
resumes.

>>> import tempfile
>>> spool = Spool(Path(tempfile.mkdtemp())).open()
>>> spool.write([Entry("otlp_spans", 0, 7, b"k", b"v")])
>>> spool.close(); again = Spool(spool.directory).open()
>>> [(e.topic, e.offset, e.value) for e in again.pending()]
[('otlp_spans', 7, b'v')]
>>> again.close()
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, InvalidStateError
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

from observer.core.durable_files import fsync_dir, write_atomically
from observer.collectors.receiver.spool_records import Entry, decode_all, encode

log = logging.getLogger(__name__)

TP = tuple[str, int]
SEGMENT_BYTES = 64 * 1024 * 1024

SPOOL_BYTES = Gauge("observer_spool_bytes", "Bytes in the receiver spool's segment files.")
SPOOL_FSYNC = Histogram(
    "observer_spool_fsync_seconds", "One group commit of the receiver spool: write and fsync.",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
)
SPOOL_DROPPED = Counter(
    "observer_spool_torn_bytes_total",
    "Bytes dropped at load from spool segments whose tail was torn or corrupt (a crash "
    "mid-write, never acknowledged to a client).",
)


class Spool:
    """Append-only segments with group-committed fsync; see the module docstring.

    ``readers``: topic -> the consumer groups that must settle its entries (a group not
    heard from yet has settled nothing); a topic not named there waits for the groups whose
    watermarks name it. ``fsync`` is replaceable for tests (it is called with the segment's
    file descriptor).
    """

    def __init__(self, directory: Path, segment_bytes: int = SEGMENT_BYTES,
                 fsync: Callable[[int], None] = os.fsync,
                 readers: Mapping[str, Iterable[str]] | None = None) -> None:
        self.directory = Path(directory)
        self.readers = {t: set(g) for t, g in (readers or {}).items()}
        self.segment_bytes = segment_bytes
        self._fsync = fsync
        self._lock = threading.Lock()  # segment files and the index
        self._cond = threading.Condition()  # the queue of waiting appends
        self._queue: list[tuple[bytes, dict[TP, int], Future[None]]] = []
        self._closing = False
        self._thread: threading.Thread | None = None
        self._fd = -1
        self._seq = 0
        self._size = 0
        # seq -> the highest offset per partition in that segment (the open one included)
        self._index: dict[int, dict[TP, int]] = {}
        self._base = 0
        self._settled: dict[str, dict[TP, int]] = {}  # group -> offsets it has settled
        self._pending: list[Entry] = []

    # -- lifecycle ----------------------------------------------------------------------------

    def open(self) -> Spool:
        """Read what the spool holds (:meth:`pending`), then start a new segment for appends."""
        # Spans may carry prompts and answers: the spool is for this user only.
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._read_meta()
        for seq, path in self._segments():
            if seq < self._base:
                path.unlink()  # superseded by a replay's rewrite
                continue
            data = path.read_bytes()
            SPOOL_BYTES.inc(len(data))
            entries, torn = decode_all(data)
            if torn:
                SPOOL_DROPPED.inc(torn)
                log.warning("spool segment %s: dropped a torn or corrupt tail of %d bytes "
                            "(a crash mid-write; never acknowledged)", path.name, torn)
            self._index[seq] = _max_offsets(entries)
            self._pending += [e for e in entries
                              if not self._is_settled(e.topic, e.partition, e.offset)]
            self._seq = seq + 1
        self._seq = max(self._seq, self._base)
        self._start_segment()
        self._thread = threading.Thread(target=self._run, name="spool-writer", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(10)
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def pending(self) -> list[Entry]:
        """The unsettled entries found at :meth:`open`, in the order they were written."""
        return list(self._pending)

    def watermarks(self) -> dict[str, dict[TP, int]]:
        """Per group, the offsets below which it had settled entries, as found at :meth:`open`."""
        return {g: dict(w) for g, w in self._settled.items()}

    def _is_settled(self, topic: str, partition: int, offset: int,
                    unread: frozenset[str] | set[str] = frozenset()) -> bool:
        """Settled by every group that reads ``topic`` (one at least); any offset of an
        ``unread`` topic (no stage reads it)."""
        if topic in unread:
            return True
        groups = self.readers.get(topic) or {
            g for g, w in self._settled.items() if any(t == topic for t, _ in w)}
        return bool(groups) and all(
            offset < self._settled.get(g, {}).get((topic, partition), 0) for g in groups)

    # -- appends ------------------------------------------------------------------------------

    def append(self, entries: Iterable[Entry]) -> Future[None]:
        """Queue ``entries``; the future completes once they are written and fsynced."""
        entries = list(entries)
        future: Future[None] = Future()
        data = b"".join(encode(e) for e in entries)
        with self._cond:
            if self._closing:  # the receiver answers 503, like any write that failed
                future.set_exception(RuntimeError("the spool is closed"))
                return future
            self._queue.append((data, _max_offsets(entries), future))
            self._cond.notify()
        return future

    def write(self, entries: Iterable[Entry], timeout_s: float | None = None) -> None:
        """:meth:`append` and wait."""
        self.append(entries).result(timeout_s)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                batch, self._queue = self._queue, []
            started = time.perf_counter()
            try:
                with self._lock:
                    for data, offsets, _ in batch:
                        self._write(data, offsets)
                    self._fsync(self._fd)
            except BaseException as e:  # noqa: BLE001 (disk full, I/O error: every waiter hears it)
                log.error("spool write failed: %s", e)
                for *_, future in batch:
                    _settle_future(future, e)
                continue
            SPOOL_FSYNC.observe(time.perf_counter() - started)
            for *_, future in batch:
                _settle_future(future, None)

    def _write(self, data: bytes, offsets: Mapping[TP, int]) -> None:
        if self._size and self._size + len(data) > self.segment_bytes:
            self._fsync(self._fd)
            os.close(self._fd)
            self._seq += 1
            self._start_segment()
        os.write(self._fd, data)
        self._size += len(data)
        SPOOL_BYTES.inc(len(data))
        index = self._index[self._seq]
        for tp, o in offsets.items():
            index[tp] = max(index.get(tp, -1), o)

    def _start_segment(self) -> None:
        self._fd = os.open(self._path(self._seq), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fsync_dir(self.directory)  # the new file's name survives a crash too
        self._index[self._seq] = {}
        self._size = 0

    # -- settling and replay --------------------------------------------------------------------

    def settle(self, group: str | None, below: Mapping[TP, int],
               unread: Iterable[str] = ()) -> int:
        """``group`` has settled its topics' entries with ``offset < below[(topic,
        partition)]`` (``below`` names every partition of the topics it reads); any entry of an
        ``unread`` topic is settled. Records the watermark and deletes every segment of
        settled entries only (the open one is rolled first when it qualifies). Returns the
        segments deleted."""
        unread = set(unread)

        def done(index: dict[TP, int]) -> bool:
            return all(self._is_settled(t, p, o, unread) for (t, p), o in index.items())

        with self._lock:
            if group is not None:
                mark = self._settled.setdefault(group, {})
                for tp, o in below.items():
                    mark[tp] = max(mark.get(tp, 0), o)
                self._write_meta()
            if self._size and done(self._index[self._seq]):
                self._fsync(self._fd)
                os.close(self._fd)
                self._seq += 1
                self._start_segment()
            removed = 0
            for seq in sorted(self._index):
                if seq != self._seq and done(self._index[seq]):
                    path = self._path(seq)
                    SPOOL_BYTES.dec(path.stat().st_size)
                    path.unlink()
                    del self._index[seq]
                    removed += 1
            return removed

    def rewrite(self, entries: list[Entry],
                watermarks: Mapping[str, Mapping[TP, int]] | None = None) -> None:
        """Replace everything held by ``entries`` (a replay's new offsets) and the groups'
        ``watermarks`` (in those offsets): written and fsynced into a new segment before
        ``base`` moves past the old ones."""
        with self._lock:
            os.close(self._fd)
            self._seq += 1
            self._start_segment()
            self._write(b"".join(encode(e) for e in entries), _max_offsets(entries))
            self._fsync(self._fd)
            self._base = self._seq
            self._settled = {g: dict(w) for g, w in (watermarks or {}).items()}
            self._write_meta()
            for seq in [s for s in self._index if s < self._seq]:
                self._path(seq).unlink(missing_ok=True)
                del self._index[seq]
            self._pending = []
            SPOOL_BYTES.set(self._size)

    # -- files ------------------------------------------------------------------------------------

    def _path(self, seq: int) -> Path:
        return self.directory / f"{seq:012d}.seg"

    def _segments(self) -> list[tuple[int, Path]]:
        found = []
        for path in self.directory.glob("*.seg"):
            if path.stem.isdigit():
                found.append((int(path.stem), path))
        return sorted(found)

    def _read_meta(self) -> None:
        path = self.directory / "meta.json"
        try:
            meta = json.loads(path.read_text())
            self._base = int(meta["base"])
            self._settled = {str(g): {(str(t), int(p)): int(o) for t, p, o in rows}
                             for g, rows in meta["settled"].items()}
        except FileNotFoundError:
            return
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            # Written atomically, so never torn: another program's file, or a hand edit.
            raise ValueError(f"the spool's {path} is not one observer wrote ({e!r}); move the "
                             "spool directory away to start without replaying it") from None

    def _write_meta(self) -> None:
        meta = {"base": self._base,
                "settled": {g: [[t, p, o] for (t, p), o in sorted(w.items())]
                            for g, w in self._settled.items()}}
        write_atomically(self.directory / "meta.json", json.dumps(meta).encode())


def _settle_future(future: Future[None], error: BaseException | None) -> None:
    try:
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
    except InvalidStateError:  # the waiter gave up (timeout) and cancelled it
        pass


def _max_offsets(entries: Iterable[Entry]) -> dict[TP, int]:
    offsets: dict[TP, int] = {}
    for e in entries:
        tp = (e.topic, e.partition)
        offsets[tp] = max(offsets.get(tp, -1), e.offset)
    return offsets


__all__ = ["Entry", "Spool", "decode_all", "encode"]
