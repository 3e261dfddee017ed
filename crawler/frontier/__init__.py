"""The catalogue as crawl state, shared by every crawler that uses it.

- ``seeding``: seed lines become pending rows under their host; re-runs requeue.
- ``crawlers``: running crawlers and the leases their heartbeats keep.
- ``hosts``: each host's shared politeness and the crawler that holds it.
- ``claims``: the pending rows of a host that a crawler takes, gives back or fails.

Every function here is synchronous database work (the engine runs it in a thread).
"""

from crawler.frontier.claims import (
    Claim,
    HostClaims,
    claim_rows,
    count_pending,
    mark_not_modified,
    release,
)
from crawler.frontier.crawlers import (
    CrawlerLease,
    DatabaseClock,
    default_crawler_name,
    forget_dead_local_crawlers,
    live_crawlers,
)
from crawler.frontier.hosts import (
    HostRecord,
    HostState,
    acquire_hosts,
    give_up_host,
    hosts_share,
    release_host,
    release_hosts,
    repair_hosts,
    save_host,
)
from crawler.frontier.seeding import SeedingReport, add_seeds, utc_now

__all__ = [
    "Claim",
    "CrawlerLease",
    "DatabaseClock",
    "HostClaims",
    "HostRecord",
    "HostState",
    "SeedingReport",
    "acquire_hosts",
    "add_seeds",
    "claim_rows",
    "count_pending",
    "default_crawler_name",
    "forget_dead_local_crawlers",
    "give_up_host",
    "hosts_share",
    "live_crawlers",
    "mark_not_modified",
    "release",
    "release_host",
    "release_hosts",
    "repair_hosts",
    "save_host",
    "utc_now",
]
