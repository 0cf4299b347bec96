"""One writer per shared index: a lease object in the bucket, beside the tables.

A local flock (rag.index.writelock) cannot exclude a writer on another machine, so an index in an
object store is written only by the holder of `writer.lease`. The design, and why:

- Taking it is a conditional PUT, `If-None-Match: *`: of two writers that try at once the
  store lets exactly one create the object; the other gets 412 and waits. The object
  records who holds it ("host pid 123 rag ingest").
- The holder refreshes it every third of `storage.lease_s` with `If-Match: <its ETag>`, so
  the ETag changes while the holder lives. A waiter never compares clocks across machines:
  it takes over only when it has seen the *same* ETag for a whole `lease_s` on its own
  monotonic clock (the holder died or is cut off), and then with `If-Match` on that ETag,
  so a holder that refreshed meanwhile, or another waiter that took over first, wins.
- The holder stops before a commit once its last refresh that succeeded began more than
  two thirds of `lease_s` ago (Store calls `check()`): a waiter cannot take over before a
  whole `lease_s` has passed since then, which leaves a third for the commit in flight.
  A refresh answered 412 means another writer took over: the holder stops at once.
- Release is a DELETE with `If-Match`, so a writer never deletes a lease it lost.

What a lease cannot do: fence a holder that stalls (suspended, partitioned) for longer than
lease_s *inside* a commit. That commit still cannot corrupt the table, because Lance
commits each version with a conditional PUT of its own and rejects or retries a conflicting
one; the lease is what keeps ingest runs, maintenance (which deletes unreferenced files
with retention 0) and table switches from interleaving. It needs a store that honours
If-None-Match and If-Match on PUT (AWS S3, MinIO since 2024, moto); one that ignores them
cannot give one writer, and Lance's own commits are unsafe there as well.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from rag.errors import StoreError
from rag.index.location import IndexLocation, error_code, s3_client, store_error

LEASE_OBJECT = "writer.lease"
# Codes a conditional request fails with when the condition does not hold (409: a
# concurrent conditional write to the same key was in flight on AWS).
_LOST = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")
_GONE = ("NoSuchKey", "404")


class Lease:
    """The writer lease on one shared index; `acquire`, then `check` before each commit."""

    def __init__(self, location: IndexLocation, lease_s: float, holder: str) -> None:
        self.location = location
        self.lease_s = lease_s
        self.holder = f"{socket.gethostname()} pid {os.getpid()} {holder}".strip()
        self._client = s3_client(location)
        self._token = uuid.uuid4().hex
        self._beat = 0
        self._etag = ""
        self._refreshed_at = 0.0  # monotonic start of the last refresh that succeeded
        self._lost = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- taking it ------------------------------------------------------------------------

    def acquire(self, wait_s: float, on_wait: Callable[[str], None] | None = None) -> None:
        """Hold the lease, waiting up to `wait_s` for its holder to release or lose it."""
        deadline = time.monotonic() + wait_s
        poll_s = min(1.0, self.lease_s / 10)
        seen_etag, seen_since, told = "", 0.0, False
        while True:
            started = time.monotonic()
            if self._put(if_none_match=True):
                break
            current = self._current()
            now = time.monotonic()
            if current is None:  # released between our PUT and the read: try again now
                continue
            etag, who = current
            if etag != seen_etag:
                seen_etag, seen_since = etag, now
                if on_wait and not told:
                    on_wait(f"waiting for the index writer lease: held by {who}")
                    told = True
            elif now - seen_since >= self.lease_s and self._put(if_match=etag):
                if on_wait:
                    on_wait(
                        f"took over the writer lease from {who}: not refreshed for "
                        f"{self.lease_s:g}s (storage.lease_s)"
                    )
                break
            if now >= deadline:
                raise StoreError(
                    f"the index at {self.location.describe()} is being written by {who}; "
                    f"waited {wait_s:g}s (storage.lock_wait_s). Try again when it has finished"
                )
            time.sleep(min(poll_s, deadline - now))
        self._refreshed_at = started
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, name="rag-lease", daemon=True)
        self._thread.start()

    def check(self) -> None:
        """Raise StoreError unless the lease is certainly still ours for the next commit."""
        if self._lost:
            raise StoreError(self._lost)
        age_s = time.monotonic() - self._refreshed_at
        if age_s > self.lease_s * 2 / 3:
            raise StoreError(
                f"lost contact with the object store {self.location.describe()}: the writer "
                f"lease was last refreshed {age_s:.0f}s ago (storage.lease_s = "
                f"{self.lease_s:g}); stopped before writing. Run the command again"
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.lease_s)
            self._thread = None
        if self._lost or not self._etag:
            return
        # Lost meanwhile, or the store is unreachable: either way the lease is no longer
        # refreshed and the next writer takes over after storage.lease_s.
        with contextlib.suppress(Exception):
            self._client.delete_object(
                Bucket=self.location.bucket,
                Key=self.location.key(LEASE_OBJECT),
                IfMatch=self._etag,
            )
        self._etag = ""

    # -- keeping it -----------------------------------------------------------------------

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            started = time.monotonic()
            try:
                if self._put(if_match=self._etag):
                    self._refreshed_at = started
                else:
                    self._lost = (
                        f"another writer took over the writer lease of "
                        f"{self.location.describe()} (this one could not refresh it within "
                        f"storage.lease_s = {self.lease_s:g}s); stopped before writing"
                    )
                    return
            except StoreError:
                continue  # unreachable for now; check() stops commits once it is too long

    def _put(self, *, if_none_match: bool = False, if_match: str = "") -> bool:
        """Write our lease record under a condition; False when the condition did not hold."""
        self._beat += 1
        body = json.dumps(
            {"holder": self.holder, "token": self._token, "beat": self._beat, "at": time.time()}
        ).encode()
        condition: dict[str, Any] = {"IfNoneMatch": "*"} if if_none_match else {"IfMatch": if_match}
        try:
            response = self._client.put_object(
                Bucket=self.location.bucket,
                Key=self.location.key(LEASE_OBJECT),
                Body=body,
                ContentType="application/json",
                **condition,
            )
        except Exception as e:
            if error_code(e) in _LOST or (if_match and error_code(e) in _GONE):
                return False
            raise store_error(e, self.location, "taking the index writer lease") from e
        self._etag = str(response["ETag"])
        return True

    def _current(self) -> tuple[str, str] | None:
        """(ETag, holder) of the lease object as it is now, or None when there is none."""
        try:
            response = self._client.get_object(
                Bucket=self.location.bucket, Key=self.location.key(LEASE_OBJECT)
            )
            body = response["Body"].read()
        except Exception as e:
            if error_code(e) in _GONE:
                return None
            raise store_error(e, self.location, "reading the index writer lease") from e
        try:
            who = str(json.loads(body).get("holder", "")) or "another writer"
        except (ValueError, AttributeError):
            who = "another writer"
        return str(response["ETag"]), who
