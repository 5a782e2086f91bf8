"""One sync cycle between the node's application store and the registry.

Push mode (a publisher node) makes the registry hold exactly what this node
publishes: every published local version of the node's architecture that the
registry lacks is uploaded, and what this node pushed (the registry's
"publisher" field is our client certificate's fingerprint) but no longer
publishes is deleted. Unpublished versions never leave the node, and what
another publisher pushed is never touched.

Pull mode (a client node) makes the node hold what the registry holds for its
architecture and registry.filter: every missing version is downloaded into
staging/, checked against the listing's size and sha256, and imported as an
immutable pulled application (a few at a time: fetch.py); pulled versions
that left the registry are removed. Local applications are never touched.

Safety: nothing is deleted unless the listing arrived whole and checked
(client.list raises on anything else: a TLS error, a timeout, a non-200, bad
JSON, a missing field). A failed transfer is reported and, since the next
cycle compares again, retried then.

The listing is remembered with its ETag (in memory for `run`, in
sync-state.json for `sync`), so an unchanged registry answers 304 and the
cycle compares the remembered listing with the store: one request, no body.
"""
import contextlib
import dataclasses
import json
import logging
import os
import tempfile

import names
from trust import certs

from .client import RegistryClient
from .errors import AgentError, Cancelled, ConfigError
from .fetch import FATAL as _FATAL
from .fetch import DOWNLOADERS, STOPPED, Fetcher, Job
from .listing import check_listing, packages_of

__all__ = [
    "Summary", "Listing", "Sync", "connect",
    "NOT_CONFIGURED", "OTHER_BYTES", "LOCAL_NAME", "NOT_IN_REGISTRY", "NOTHING_TO_PUSH",
    "STOPPED", "SUMMARY",
]

NOT_CONFIGURED = ("{key} is not set: run `ams-sync config set {key} VALUE` "
                  "(see the operator guide: Configure AMS to use the AAR)")
OTHER_BYTES = ("{what}: the registry holds other bytes (sha256 {theirs}) than this "
               "node ({ours}); publish a new version instead")
LOCAL_NAME = ("{name}: a local application has this name, so the registry's "
              "cannot be pulled; rename or delete the local one")
NOT_IN_REGISTRY = "application {name} is not in the registry for {arch}"
NOTHING_TO_PUSH = ("application {name} has no published version for {arch}: publish "
                   "one first with `ams-sync application publish {name} VERSION`")
SUMMARY = "{mode}: {pushed} pushed, {pulled} pulled, {removed} removed, {failed} failed{note}"
PLAN = "{mode} (dry run): would push {pushed}, pull {pulled}, remove {removed}; {failed} refused"

log = logging.getLogger("ams_sync.sync")


@dataclasses.dataclass
class Summary:
    """What one cycle (or one `registry push|pull APP`) did."""

    mode: str
    pushed: list = dataclasses.field(default_factory=list)    # "app/version/arch"
    pulled: list = dataclasses.field(default_factory=list)
    removed: list = dataclasses.field(default_factory=list)
    failed: list = dataclasses.field(default_factory=list)    # messages
    unchanged: bool = False          # the registry answered 304
    dry_run: bool = False            # a plan: the lists say what would be done

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def idle(self) -> bool:
        """Nothing done and nothing failed: the cycle a running loop logs quietly."""
        return not (self.pushed or self.pulled or self.removed or self.failed)

    def __str__(self):
        counts = dict(mode=self.mode, pushed=len(self.pushed), pulled=len(self.pulled),
                      removed=len(self.removed), failed=len(self.failed))
        if self.dry_run:
            return PLAN.format(**counts)
        # A 304 says only that the listing did not change; the node may still
        # have pushed a new local version, so the note goes with idle cycles only.
        note = " (registry unchanged)" if self.unchanged and self.idle else ""
        return SUMMARY.format(note=note, **counts)


class Listing:
    """The last listing the registry sent: what was asked, its ETag, its body.

    With a path it is kept in that file between processes (`sync`); a
    damaged or foreign file only costs one full listing.
    """

    def __init__(self, path=None):
        self.path = os.fspath(path) if path is not None else None
        self.key = self.etag = self.apps = None
        if self.path is not None:
            try:
                with open(self.path, encoding="utf-8") as file:
                    saved = json.load(file)
                self.key, self.etag, self.apps = saved["key"], saved["etag"], saved["apps"]
                # A 304 makes this the registry's word: it must be whole.
                check_listing(self.apps)
            except (OSError, ValueError, KeyError, TypeError):
                self.key = self.etag = self.apps = None

    def etag_for(self, key):
        return self.etag if self.key == key and self.apps is not None else None

    def remember(self, key, etag, apps):
        self.key, self.etag, self.apps = key, etag, apps
        if self.path is None:
            return
        directory = os.path.dirname(os.path.abspath(self.path))
        fd, temp = tempfile.mkstemp(dir=directory, prefix=".sync-state.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                json.dump({"key": key, "etag": etag, "apps": apps}, file,
                          separators=(",", ":"))
            os.replace(temp, self.path)
        except OSError as error:
            # Only a cache: the next `sync` lists in full.
            log.warning("cannot save %s: %s", self.path, error.strerror)
            with contextlib.suppress(OSError):
                os.unlink(temp)


def connect(dirs, config, timeout=30.0):
    """(RegistryClient, our client fingerprint) for the configured registry.

    The client certificate is made on first use (paths.DataDir).
    """
    for key, value in (("registry.url", config.url),
                       ("registry.fingerprint", config.fingerprint)):
        if not value:
            raise ConfigError(NOT_CONFIGURED.format(key=key))
    cert, key = dirs.client_certificate()
    own = certs.load_certificate(cert).fingerprint
    return RegistryClient(config.url, config.fingerprint, cert, key, timeout), own


def _name(key):
    return "%s/%d/%s" % key


class Sync:
    """Cycles of one node against one registry client."""

    def __init__(self, client, store, *, own_fingerprint, architecture=None,
                 listing=None, stop=None, progress=None, downloaders=DOWNLOADERS,
                 dry_run=False):
        self.client, self.store = client, store
        self.own = own_fingerprint
        self.arch = architecture or names.host_architecture()
        self.listing = listing if listing is not None else Listing()
        self.stop = stop
        self.progress = progress      # progress(what, done, total) during transfers
        self.downloaders = downloaders    # downloads at once in pull mode
        # dry_run: list, compare and report what would change; transfer,
        # delete and import nothing.
        self.dry_run = dry_run

    def cycle(self, mode, tags=()) -> Summary:
        """One cycle in registry.mode `mode`; manual mode does nothing."""
        if mode == "push":
            return self.push()
        if mode == "pull":
            return self.pull(tags)
        return Summary(mode)

    # -- the listing ---------------------------------------------------------

    def _key(self, tags):
        """What a remembered listing answered: it stands only for the same question."""
        return [self.client.url, self.client.fingerprint, self.own, self.arch, sorted(tags)]

    def watch(self, tags, seconds, stop=None):
        """Hold a listing request for up to `seconds` (the registry's `wait`).

        True when the listing changed (the new one is remembered, so the
        cycle that follows gets 304 and acts on it), False when it did not
        (304, or 200 with the same ETag), None when there is no remembered
        listing to compare with. Failures raise, as client.list does.
        """
        key = self._key(tags)
        etag = self.listing.etag_for(key)
        if etag is None:
            return None
        new_etag, apps = self.client.list(self.arch, tags, etag, wait=seconds, stop=stop)
        if apps is None or new_etag == etag:
            return False
        self.listing.remember(key, new_etag, apps)
        return True

    def _list(self, tags, summary):
        """The registry's packages {(app, version, arch): package}, or None
        (the failure is in summary) when the listing is not to be trusted.
        """
        key = self._key(tags)
        try:
            etag, apps = self.client.list(self.arch, tags, self.listing.etag_for(key),
                                          stop=self.stop)
        except AgentError as error:
            if isinstance(error, Cancelled):
                raise
            summary.failed.append(str(error))
            return None
        if apps is None:
            summary.unchanged = True
            apps = self.listing.apps
        else:
            self.listing.remember(key, etag, apps)
        return packages_of(apps)

    def _attempt(self, summary, what, action):
        """Run action(); a failure is noted. False when the cycle must end."""
        if self.stop is not None and self.stop.is_set():
            raise Cancelled(STOPPED)
        try:
            action()
            return True
        except Cancelled:
            raise
        except _FATAL as error:
            summary.failed.append(str(error))
            return False
        except AgentError as error:
            summary.failed.append(str(error))
        except OSError as error:
            summary.failed.append(f"{what}: {error.strerror or error}")
        return True

    # -- push ----------------------------------------------------------------

    def push(self, app=None) -> Summary:
        """Push mode's cycle; with app, only that application."""
        summary = Summary("push", dry_run=self.dry_run)
        remote = self._list((), summary)
        if remote is None:
            return summary
        local = {(v["name"], v["version"], v["architecture"]): v
                 for v in self.store.versions(name=app, published=True)
                 if v["architecture"] == self.arch and v["origin"] == "local"}
        for key in sorted(local):
            ours, theirs = local[key], remote.get(key)
            if theirs is None and self.dry_run:
                summary.pushed.append(_name(key))
            elif theirs is None:
                if not self._attempt(summary, _name(key), lambda: self._upload(key, ours, summary)):
                    return summary
            elif theirs["sha256"] != ours["sha256"]:
                summary.failed.append(OTHER_BYTES.format(
                    what=_name(key), theirs=theirs["sha256"][:12], ours=ours["sha256"][:12]))
        for key in sorted(remote):
            if key in local or remote[key]["publisher"] != self.own:
                continue
            if app is not None and key[0] != app:
                continue
            if self.dry_run:
                summary.removed.append(_name(key))
                continue
            if not self._attempt(summary, _name(key), lambda: self._delete(key, summary)):
                return summary
        if app is not None and not local and not summary.removed:
            summary.failed.append(NOTHING_TO_PUSH.format(name=app, arch=self.arch))
        return summary

    def _upload(self, key, version, summary):
        what = _name(key)
        self.client.upload(*key, self.store.blob_path(version["sha256"]), version["sha256"],
                           version["manifest"], progress=self._progress(what), stop=self.stop)
        log.info("pushed %s", what)
        summary.pushed.append(what)

    def _delete(self, key, summary):
        self.client.delete(*key)
        log.info("removed %s from the registry", _name(key))
        summary.removed.append(_name(key))

    # -- pull ----------------------------------------------------------------

    def pull(self, tags=(), app=None) -> Summary:
        """Pull mode's cycle; with app, only that application (any tags)."""
        summary = Summary("pull", dry_run=self.dry_run)
        remote = self._list(() if app else tags, summary)
        if remote is None:
            return summary
        if app is not None:
            remote = {key: pkg for key, pkg in remote.items() if key[0] == app}
        apps = self.store.index()
        local_names = {a["name"] for a in apps if a["origin"] != "pulled"}
        pulled = {(a["name"], v["version"], v["architecture"]): v
                  for a in apps if a["origin"] == "pulled" and app in (None, a["name"])
                  for v in a["versions"]}
        # plan: in listing order, the refusals (messages) and the jobs, so the
        # summary reads in that order whatever order the downloads end in
        plan, jobs, refused = [], [], set()
        for key in sorted(remote):
            pkg, have = remote[key], pulled.get(key)
            if have is not None and have["sha256"] == pkg["sha256"]:
                continue
            if key[0] in local_names:
                if key[0] not in refused:
                    refused.add(key[0])
                    plan.append(LOCAL_NAME.format(name=key[0]))
                continue
            jobs.append(Job(key, pkg, replace=have is not None))
            plan.append(jobs[-1])
        if self.stop is not None and self.stop.is_set():
            raise Cancelled(STOPPED)
        finished = not jobs or self.dry_run or Fetcher(self.client, self.store, stop=self.stop,
                                       progress=self.progress, downloaders=self.downloaders,
                                       log=log).run(jobs)
        for item in plan:
            if isinstance(item, str):
                summary.failed.append(item)
            elif item.done or self.dry_run:
                summary.pulled.append(item.what)
            elif item.error is not None:
                summary.failed.append(item.error)
        if not finished:
            return summary
        self._remove_departed(apps, remote, app, summary)
        if app is not None and not remote and not summary.removed:
            summary.failed.append(NOT_IN_REGISTRY.format(name=app, arch=self.arch))
        return summary

    def _remove_departed(self, apps, remote, only, summary):
        """Remove pulled versions the registry no longer lists; a pulled
        application the registry no longer lists at all goes as a whole."""
        listed = {key[0] for key in remote}
        for a in apps:
            name = a["name"]
            if a["origin"] != "pulled" or only not in (None, name):
                continue
            gone = [key for key in ((name, v["version"], v["architecture"])
                                    for v in a["versions"]) if key not in remote]
            if gone or name not in listed:
                self._attempt(summary, name,
                              lambda: self._remove(name, gone, name not in listed, summary))

    def _remove(self, name, gone, whole, summary):
        if self.dry_run:
            summary.removed.extend(_name(key) for key in gone)
            return
        if whole:
            self.store.delete(name, force=True)
        else:
            for key in gone:
                self.store.delete_version(name, key[1], force=True)
        for key in gone:
            log.info("removed %s: no longer in the registry", _name(key))
            summary.removed.append(_name(key))

    def _progress(self, what):
        if self.progress is None:
            return None
        return lambda done, total: self.progress(what, done, total)
