"""`aar serve --processes N` (N > 1): the parent's start and each worker's.

The parent has done what happens once (aarcli/serve.py: configuration,
the stores' checks and recovery, the server identity). Here it binds the
listening socket and the metrics port, keeps the data directory's claim,
closes every database (a sqlite connection must not cross a fork: its
POSIX locks stay behind while its memory says it holds them), and hands
over to the Supervisor (registry/workers.py), which forks the workers
before any thread starts. Each worker opens the stores again, attached
(no recovery: a sibling's upload may be in flight), and serves on the
inherited socket as a single `aar serve` does.

Per worker, not divided: the connection limits (each has its own
descriptors), the limit on unfinished handshakes, the limit per client
address and the join endpoint's rate limit; so N workers admit N times
as many. Shared through the data directory: the trust store (a revocation
reaches every worker's next request: the generation gate, livetrust.py),
join tokens (redeemed in one transaction of trust.db), the package store
(writes serialised by flock, registry/blobs.py WriteLock) and the audit log
(one O_APPEND write per record). A publish or delete through one worker
nudges the others (registry/nudges.py), whose held listings answer at once.
"""
import logging
import os

__all__ = ["serve_many"]

log = logging.getLogger("aar")

def serve_many(args, data, address, stores, make_server, serving):
    from registry.server import Settings, listen
    from registry.workers import Supervisor
    from .serve import cannot_listen, show_address

    packages, trust_store, cert = stores
    base = Settings()
    try:
        sock = listen(address[0], address[1], base.backlog, base.handshake_timeout)
    except OSError as exc:
        packages.close()
        trust_store.close()
        raise cannot_listen("on", address, exc)
    trusted = len(trust_store.trusted())
    claim = packages.keep_lock()
    packages.close()
    trust_store.close()
    try:
        try:
            supervisor = Supervisor(
                args.processes, lambda slot, control, nudge: _worker(
                    args, data, address, cert, sock, control, nudge, make_server),
                args.metrics_listen)
        except OSError as exc:
            raise cannot_listen("for metrics on", args.metrics_listen, exc)
        serving(sock.getsockname()[:2], data, cert, trusted)
        if supervisor.metrics_address is not None:
            log.info("metrics on http://%s/metrics and /healthz (the sum over the "
                     "worker processes)", show_address(*supervisor.metrics_address))
        return supervisor.run()
    finally:
        sock.close()
        os.close(claim)


def _worker(args, data, address, cert, sock, control, nudge, make_server):
    """One worker process: the stores attached, the server on `sock`."""
    from registry import health
    from registry.server import Settings
    from registry.storage import PackageStore
    from registry.workers import Control
    from trust.store import TrustStore
    from .serve import run_server

    packages = PackageStore(data, attach=True)
    try:
        trust_store = TrustStore(data.trust_db)
    except BaseException:
        packages.close()
        raise
    threads = 0 if args.handshake_threads is None else args.handshake_threads
    settings = Settings(workers=args.workers, handshake_threads=threads,
                        change_poll=args.change_poll, shared_listener=True,
                        nudge=nudge)
    server, close = make_server(args, data, address, (packages, trust_store, cert),
                                settings, sock=sock)
    Control(control, server, lambda: health.check(server, data))
    return run_server(server, close)
