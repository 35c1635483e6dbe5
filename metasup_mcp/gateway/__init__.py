"""Aggregation: the children's tools, resources and prompts under namespaced names, routed.

Public surface: `Gateway` (core), `Unanswered` (a forwarded request got no answer),
`Histogram` and `LATENCY_BUCKETS` (stats), the naming scheme (`exposed_name`, `split_name`,
`address_uri`, `resolve_uri`). The scheme and the policies are described in docs/gateway.md.
"""

from metasup_mcp.gateway.core import Gateway
from metasup_mcp.gateway.errors import Unanswered
from metasup_mcp.gateway.naming import URI_PREFIX, address_uri, exposed_name, resolve_uri, split_name
from metasup_mcp.gateway.stats import LATENCY_BUCKETS, Histogram

__all__ = [
    "LATENCY_BUCKETS",
    "URI_PREFIX",
    "Gateway",
    "Histogram",
    "Unanswered",
    "address_uri",
    "exposed_name",
    "resolve_uri",
    "split_name",
]
