"""The AMS side of aar: the node's registry agent (``python -m ams_sync``).

Modules, one concern each:

    errors.py     AgentError, the package's one exception family
    duration.py   Go duration syntax: "30s", "5m", "1h30m" (pure)
    manifest.py   the YAML subset manifest.yaml files are read with (pure)
    paths.py      the data directory: where every file lives, and the
                  registry client certificate made on first use
    config.py     registry.* settings in an atomically written JSON file
    package.py    what a package may hold, checked on the staged file
    staging.py    a package's bytes into staging/ (a directory packed), hashed
    blobs.py      content-addressed package files and their cleanup
    appsdb.py     apps.db: schema, migrations, transactions
    appstore.py   the node's applications: versions in apps.db, bytes in blobs
    client.py     the registry API over pinned mutual TLS
    failures.py   what a failed request means, worded for the operator
    transfer.py, listing.py, sync.py, loop.py, commands.py
                  the sync engine and its commands
"""
