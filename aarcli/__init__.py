"""The commands of `aar`, one module per command group; aar.py builds the parser.

    common.py   CommandError, the data directory a command works on, reading a PEM
    serve.py    aar serve
    trust.py    aar trust add|list|remove|revoke|set-role
    apps.py     aar application list|show|delete (the store, read on the registry host)
"""
