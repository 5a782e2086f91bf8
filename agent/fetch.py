"""The downloads and imports of a pull cycle, as a pipeline.

Every package the node lacks is downloaded into a staging file of its own
(AppStore.staging_file), checked against the listing's size and sha256 while
it arrives, then imported. Two kinds of thread share the work:

  * DOWNLOADERS threads only receive, each on its own keep-alive connection
    (RegistryClient.clone), so the network never waits for the disk;
  * IMPORTERS threads (the calling thread is one of them) take finished
    downloads in turn: fsync, inspect, move into blobs/, record.

At most LEAD packages per downloader are staged at a time (downloading,
waiting or being imported), so downloads never run far ahead of slow imports.

TLS reads, sha256 updates of 1 MiB, file writes, fsync and the zip CRC pass
all release the GIL, so the threads run side by side on several cores; the
store's database writes stay one at a time under its lock. The download
already checked every byte's sha256, so the import does not read the file
again for it (AppStore.import_package(verified=True)).

One package failing fails that package alone: the others go on, and nothing
of the failed one remains (its staging file is removed, and nothing reaches
blobs/ or the database before it is whole, checked and on disk). An error
that every further request would meet too (FATAL: the registry is gone, our
certificate is refused) lets the transfers under way finish but starts no
new one, and the cycle then removes nothing.

The stop event ends everything: each transfer looks at it between chunks,
the loop's abort() of the client breaks its clones' connections too, so a
read blocked in any of them wakes at once, and downloads not yet imported
are discarded. Without a stop event (one `sync` command) an interrupt of the
calling thread stops the others the same way before it goes on up.
"""
import contextlib
import queue
import threading
import time

from .errors import (AgentError, Cancelled, Forbidden, NotTrusted, PinError,
                     RegistryUnavailable)

__all__ = ["Job", "Fetcher", "DOWNLOADERS", "IMPORTERS", "LEAD", "FATAL", "STOPPED"]

STOPPED = "the cycle was stopped"

DOWNLOADERS = 3        # downloads under way at once, one connection each
IMPORTERS = 2          # finished downloads being imported at once
LEAD = 3               # staged packages allowed per downloader
# These end the whole cycle: every further request would fail the same way.
FATAL = (RegistryUnavailable, PinError, NotTrusted, Forbidden)
# A transfer gets ten minutes plus the time for its bytes at 64 KiB/s: far
# beyond any working link, yet a dead one does not hold the cycle forever.
_BASE_DEADLINE = 600.0
_MIN_RATE = 64 * 1024
_JOIN = 5.0            # how long an interrupted caller waits for the others


class Job:
    """One package to fetch: key (app, version, arch), the listing's package,
    and whether it replaces a pulled version with other bytes. After
    Fetcher.run: done, or error (a message), or neither (never finished)."""

    __slots__ = ("key", "pkg", "replace", "done", "error")

    def __init__(self, key, pkg, replace=False):
        self.key, self.pkg, self.replace = key, pkg, replace
        self.done, self.error = False, None

    @property
    def what(self):
        return "%s/%d/%s" % self.key


class _Stop:
    """The caller's stop event (if any) or the fetcher's own: a transfer
    stops for either. Only is_set() and wait() are asked of it."""

    def __init__(self, outer):
        self.outer, self.inner = outer, threading.Event()

    def is_set(self):
        return self.inner.is_set() or (self.outer is not None and self.outer.is_set())

    def set(self):
        self.inner.set()

    def wait(self, timeout):
        """Wait up to timeout seconds (a pause between attempts) for either."""
        end = time.monotonic() + timeout
        while not self.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return False
            self.inner.wait(min(left, 0.05))
        return True


def _failure(job, error):
    """The summary's message for an exception a job raised."""
    if isinstance(error, OSError) and not isinstance(error, AgentError):
        return f"{job.what}: {error.strerror or error}"
    return str(error)


class Fetcher:
    """Fetch jobs into store through client (see the module docstring)."""

    def __init__(self, client, store, *, stop=None, progress=None, downloaders=DOWNLOADERS,
                 importers=IMPORTERS, log=None):
        self.client, self.store = client, store
        self.stop = _Stop(stop)
        self.progress = progress        # progress(what, done, total)
        self.downloaders, self.importers = max(1, downloaders), max(1, importers)
        self.log = log
        self.halted = False             # a FATAL error: no new download was started
        self._lock = threading.Lock()
        self._pending = iter(())
        self._ready = queue.Queue()     # (job, staged path, ExitStack) or None: no more
        self._running = 0               # downloaders still at work
        self._slots = threading.Semaphore(self.downloaders * LEAD)  # staged files
        self._crash = None              # a thread's unexpected exception
        self._received, self._total, self._label = {}, 0, ""

    def run(self, jobs):
        """Fetch every job; return True unless a FATAL error halted the run.

        Cancelled if the stop event was set, once every thread has ended.
        """
        jobs = list(jobs)
        self._pending = iter(jobs)
        self._total = sum(job.pkg["size"] for job in jobs)
        self._label = jobs[0].what if len(jobs) == 1 else f"{len(jobs)} packages"
        count = self._running = min(self.downloaders, len(jobs))
        threads, clones = [], []
        try:
            for index in range(count):
                client = self.client if index == 0 else self.client.clone()
                clones += [client] if index else []
                threads.append(self._start(self._downloads, client))
            for _ in range(min(self.importers, len(jobs)) - 1):
                threads.append(self._start(self._imports))
            self._imports()
            for thread in threads:
                thread.join()
        except BaseException:
            self._halt()
            self._discard(threads)
            raise
        finally:
            for clone in clones:
                clone.close()
        if hasattr(self.progress, "clear"):
            self.progress.clear()
        if self._crash is not None:
            raise self._crash
        if self.stop.is_set():
            raise Cancelled(STOPPED)
        return not self.halted

    def _start(self, body, *args):
        def guarded():
            try:
                body(*args)
            except BaseException as error:   # re-raised by run() in the caller
                with self._lock:
                    self._crash = self._crash or error
                self._halt()
        thread = threading.Thread(target=guarded, daemon=True, name="ams-sync-fetch")
        thread.start()
        return thread

    def _halt(self):
        """Stop every transfer now (a crash or an interrupt of the caller)."""
        self.stop.set()
        self.client.abort()

    def _discard(self, threads):
        """After a halt: let the threads end, then remove what is still staged."""
        for _ in threads:
            self._ready.put(None)           # no importer waits for ever
        deadline = time.monotonic() + _JOIN
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with contextlib.suppress(queue.Empty):
            while True:
                item = self._ready.get_nowait()
                if item is not None:
                    item[2].close()

    # -- downloading ------------------------------------------------------------

    def _slot(self):
        """Wait for room to stage one more package; False when stopping."""
        while not self._slots.acquire(timeout=0.1):
            if self.stop.is_set():
                return False
        return True

    def _next(self):
        with self._lock:
            if self.halted or self.stop.is_set():
                return None
            return next(self._pending, None)

    def _downloads(self, client):
        """A downloader: take jobs until none is left, or the run halts or stops."""
        try:
            while self._slot():
                job = self._next()
                if job is None:
                    self._slots.release()
                    return
                staged = self._download(client, job)
                if staged is not None:
                    self._ready.put((job, *staged))
        finally:
            with self._lock:
                self._running -= 1
                last = self._running == 0
            if last:
                for _ in range(self.importers):
                    self._ready.put(None)

    def _download(self, client, job):
        """(staged path, ExitStack that removes it and frees its slot), or
        None if it failed. The caller holds a slot."""
        key, pkg = job.key, job.pkg
        deadline = time.monotonic() + _BASE_DEADLINE + pkg["size"] / _MIN_RATE
        stack = contextlib.ExitStack()
        stack.callback(self._slots.release)      # runs last, once the file is gone
        try:
            staged = stack.enter_context(self.store.staging_file())
            # The importer fsyncs it; the network need not wait for the disk.
            client.download(*key, staged, pkg["sha256"], pkg["size"],
                            progress=self._progress_of(job), deadline=deadline,
                            stop=self.stop, durable=False)
            return staged, stack
        except Cancelled:
            stack.close()
            return None
        except FATAL as error:
            with self._lock:
                self.halted = True
            job.error = _failure(job, error)
        except (AgentError, OSError) as error:
            job.error = _failure(job, error)
        except BaseException:
            stack.close()
            raise
        stack.close()
        self._forget(job)
        return None

    # -- importing --------------------------------------------------------------

    def _imports(self):
        """An importer: import finished downloads until the downloaders are done."""
        while True:
            item = self._ready.get()
            if item is None:
                return
            job, staged, stack = item
            with stack:
                if self.stop.is_set():
                    continue                # stopping: staged files just go
                try:
                    self._import(job, staged)
                    job.done = True
                except (AgentError, OSError) as error:
                    job.error = _failure(job, error)
                    self._forget(job)

    def _import(self, job, staged):
        key, pkg = job.key, job.pkg
        if job.replace:
            # The registry's bytes for this version changed (deleted and
            # pushed again); it is the authority for pulled applications.
            self.store.delete_version(key[0], key[1], force=True)
        # The download checked the sha256 of every byte it wrote.
        self.store.import_package(*key, staged, pkg["sha256"],
                                  manifest=pkg.get("manifest") or None, origin="pulled",
                                  verified=True, progress=self._phases_of(job))
        if self.log is not None:
            self.log.info("pulled %s", job.what)

    # -- progress: one line for the whole run ------------------------------------

    def _progress_of(self, job):
        if self.progress is None:
            return None

        def report(done, total):
            with self._lock:
                self._received[job.key] = done
                self.progress(self._label, sum(self._received.values()), self._total)
        return report

    def _phases_of(self, job):
        # After the download's 100%, checking a large package takes a while:
        # a progress that can show phases (TerminalProgress) says so.
        phase = getattr(self.progress, "phase", None)
        if phase is None:
            return None
        return lambda name, done=None, total=None: phase(job.what, name, done, total)

    def _forget(self, job):
        """A failed job's bytes leave the count and the total."""
        if self.progress is None:
            return
        with self._lock:
            self._received.pop(job.key, None)
            self._total -= job.pkg["size"]
            if self._total > 0:
                self.progress(self._label, sum(self._received.values()), self._total)
