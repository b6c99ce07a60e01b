"""Object storage: ``file://`` under a data directory (local) and ``gs://`` (Google Cloud Storage).

``store_for(uri)`` returns the store that serves a URI's scheme.
"""
