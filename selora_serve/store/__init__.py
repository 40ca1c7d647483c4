"""The adapter store: where adapters live and how a front end gets a verified copy to load.

    base       names, errors (AdapterError 400, StoreUnavailable 503), StoredAdapter, the Root interface
    local      LocalRoot: a directory of adapter directories
    s3         S3Root: an s3://BUCKET/PREFIX root through obstore; cached_copy into the cache
    cache      AdapterCache: the byte-bounded local cache remote adapters are fetched into, shared
               by every process on a host
    catalog    AdapterStore: roots in order, first root wins; listings and manifests
    verify     validate / validate_bytes: everything the engine would hit, before it does
    snapshot   the private, verified copy an engine loads (one read of the source)
    checkout   name -> verified snapshot path: what both front ends (vLLM's resolver, Ray's loader) call
    s3local    the S3-protocol test server (moto on loopback) and a fault-injecting proxy

Nothing here imports vLLM or Ray; the layering runs base <- local, s3, cache <- catalog,
verify <- snapshot <- checkout, with no import back up.
"""

from .base import AdapterError, AdapterNameError, StoredAdapter, StoreUnavailable, check_name
from .catalog import AdapterStore

__all__ = ["AdapterError", "AdapterNameError", "AdapterStore", "StoreUnavailable", "StoredAdapter", "check_name"]
