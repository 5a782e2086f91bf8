"""The AMS side of aar: the node's registry agent (``python -m ams_sync``).

Modules, one concern each:

    errors.py     AgentError, the package's one exception family
    duration.py   Go duration syntax: "30s", "5m", "1h30m" (pure)
    manifest.py   the YAML subset manifest.yaml files are read with (pure)
    paths.py      the data directory: where every file lives, and the
                  registry client certificate made on first use
    config.py     registry.* settings in an atomically written JSON file
    package.py    what a package may hold; staging and packing one
    blobs.py      content-addressed package files and their cleanup
    appstore.py   the node's applications: versions in sqlite3, bytes in blobs
    client.py, transfer.py, listing.py, sync.py, loop.py, commands.py
                  talking to the registry: the sync engine and its commands
"""
