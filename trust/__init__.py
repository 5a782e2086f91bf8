"""Certificates, fingerprints, the trust store and TLS contexts.

Shared by the registry (aar) and the agent (ams_sync). The modules are kept
apart by concern: errors, der (pure DER reader), certs (PEM and X.509 fields),
sqlmap (sqlite3 mapping for shelve), store (the trust store), tls (contexts
and pinning), openssl (key and certificate creation).
"""
