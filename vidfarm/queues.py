"""Which RQ queue a task waits in, how workers take the next one, and per-pool job counts.

A pool is configured by its queue names (`queues: [cpu]` in the autoscaler's pools, `vidfarm worker
--queue cpu`, VIDFARM_QUEUES); every name below is derived from those here, so no user lists them.
Two levels, each with one RQ queue per tenant:

- `<pool>.first.<tag>`: a video's first chunk and its audio task (the segments a player needs first);
- `<pool>.rest.<tag>`: every other task of that tenant (later chunks, finalize).

`<tag>` is 16 hex digits of the tenant id's SHA-256, so a queue name is bounded in length and charset
whatever a tenant id looks like. The plain `<pool>` queue is still served, last: jobs queued under the
old names before an upgrade run as before.

Why per-tenant RQ queues and a dispatch script rather than RQ's `dequeue_strategy="round_robin"`: RQ
rotates one fixed list of queues (fixed when the worker starts), so it neither learns of a tenant that
appears later nor keeps the first-chunk level ahead of the rest while it rotates. Why RQ queues at all
rather than lists of our own: a job keeps RQ's bookkeeping (its origin queue, the started, failed and
deferred registries, finalize's dependency re-queueing it into its origin), which the reconciler, stop
and the metrics read. So jobs are queued by RQ as ever, and a worker takes the next one with one Lua
script (`DISPATCH`) that, atomically, for the first-chunk level and then the rest level:

1. takes from the level's sorted set of tenants with work (`vidfarm:dispatch:<pool>:<level>`, tags
   in lexical order) the first tag after the one this worker served last (wrapping around): round-robin;
2. LPOPs that tenant's queue of the level; an empty one leaves the set (ZREM) and the walk goes on;

then the plain pool queue. A tenant is added to a level's set after its job is pushed (`announce`:
on enqueue, and by the worker after each job, whose end may have released a finalize into its
tenant's queue), so a tenant never leaves a set with a job waiting.

Cost to Redis per dequeue: one EVALSHA running a ZRANGE BYLEX (two on a wrap) and an LPOP, O(log T)
for T tenants with work, plus a ZREM and a ZRANGE per tenant found empty (each tenant once per time it
runs dry), then RQ's usual job fetch (`bench/dispatch_cost.py`). An idle worker blocks in one
BLPOP on the pool's doorbell list and the plain queue (a slice of up to 10 s, as before); every enqueue
rings the doorbell (RPUSH + LTRIM, kept at DOORBELL_MAX entries), and a worker that was woken and took a
job rings it again, so a burst wakes as many idle workers as it has jobs, one after the other.
Counting a pool is two round trips (`pool_counts`); the workers' upkeep forgets a tenant's queues once
nothing is left in them (`forget_idle_queues`), so both cost the tenants with recent jobs only.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

import redis
from rq import Queue
from rq.registry import (
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ReadyJobRegistry,
    StartedJobRegistry,
)

FIRST, REST = "first", "rest"
LEVELS = (FIRST, REST)
TAG_DIGITS = 16
# Wake-ups kept for idle workers. More would only wake workers to find nothing: a woken worker that
# finds a job wakes the next one itself.
DOORBELL_MAX = 16

QUEUE_PREFIX = Queue.redis_queue_namespace_prefix
RANG = ("", "")  # Dispatcher.wait: a doorbell woke the worker, no job taken yet

# KEYS: per pool, its first-level then its rest-level set of tenants with work. ARGV: the queue key
# prefix, the tag served last ("" for none), then the pool names.
DISPATCH = """
local qp, last = ARGV[1], ARGV[2]
local function after(key, tag)
  local found = {}
  if tag ~= '' then found = redis.call('ZRANGE', key, '(' .. tag, '+', 'BYLEX', 'LIMIT', 0, 1) end
  if #found == 0 then found = redis.call('ZRANGE', key, '-', '+', 'BYLEX', 'LIMIT', 0, 1) end
  return found[1]
end
local pools = #ARGV - 2
for level, label in ipairs({'first', 'rest'}) do
  for i = 1, pools do
    local key, name = KEYS[2 * (i - 1) + level], ARGV[2 + i] .. '.' .. label .. '.'
    local tag = after(key, last)
    while tag do
      local id = redis.call('LPOP', qp .. name .. tag)
      if id then return {name .. tag, id, tag} end
      redis.call('ZREM', key, tag)
      tag = after(key, tag)
    end
  end
end
for i = 1, pools do
  local id = redis.call('LPOP', qp .. ARGV[2 + i])
  if id then return {ARGV[2 + i], id, ''} end
end
return false
"""
# ARGV: RQ's set of queue keys, then per queue its key and the keys of its registries (REGISTRIES).
FORGET = """
local known, forgotten, i = ARGV[1], 0, 2
while i <= #ARGV do
  local empty = redis.call('LLEN', ARGV[i]) == 0
  for j = 1, 5 do
    empty = empty and redis.call('ZCARD', ARGV[i + j]) == 0
  end
  if empty then forgotten = forgotten + redis.call('SREM', known, ARGV[i]) end
  i = i + 6
end
return forgotten
"""
REGISTRIES = (StartedJobRegistry, FinishedJobRegistry, FailedJobRegistry, DeferredJobRegistry, ReadyJobRegistry)


def tenant_tag(tenant: str) -> str:
    return hashlib.sha256(tenant.encode()).hexdigest()[:TAG_DIGITS]


def task_queue(pool: str, tenant: str, first: bool) -> str:
    """The RQ queue a task of `tenant`'s video on `pool` waits in."""
    return f"{pool}.{FIRST if first else REST}.{tenant_tag(tenant)}"


def pool_of(queue_name: str) -> str:
    """The pool queue a derived queue belongs to (a pool's own name is its own pool)."""
    parts = queue_name.rsplit(".", 2)
    if len(parts) == 3 and parts[1] in LEVELS and len(parts[2]) == TAG_DIGITS:
        return parts[0]
    return queue_name


def tenants_key(pool: str, level: str) -> str:
    return f"vidfarm:dispatch:{pool}:{level}"


def doorbell_key(pool: str) -> str:
    return f"vidfarm:dispatch:{pool}:doorbell"


def announce(rq_redis: redis.Redis, pool: str, tenants: Sequence[str], *, wake: bool = True) -> None:
    """After queueing jobs: add their tenants to the pool's tenants with work at both levels (after the
    push, so the dispatch script never drops a tenant with a job waiting; one without jobs at a level
    is dropped at the next walk) and wake one idle worker."""
    pipe = rq_redis.pipeline(transaction=False)
    for level in LEVELS:
        pipe.zadd(tenants_key(pool, level), dict.fromkeys({tenant_tag(t) for t in tenants}, 0))
    if wake:
        ring(pipe, pool)
    pipe.execute()


def announce_released(rq_redis: redis.Redis, queue_name: str) -> None:
    """After a job of `queue_name` ended: RQ may have queued what depended on it (finalize) into its
    tenant's later-chunks queue, without announcing it."""
    pool = pool_of(queue_name)
    if pool != queue_name:
        rq_redis.zadd(tenants_key(pool, REST), {queue_name.rsplit(".", 1)[1]: 0})


def ring(pipe: redis.client.Pipeline, pool: str) -> None:
    pipe.rpush(doorbell_key(pool), 1)
    pipe.ltrim(doorbell_key(pool), -DOORBELL_MAX, -1)


def pool_queues(rq_redis: redis.Redis, pool: str, *, with_work_only: bool = True) -> list[str]:
    """The pool's RQ queues: its plain queue, then the derived queues of its tenants with work (or,
    without `with_work_only`, of every tenant RQ has a queue of, for registries that outlive the
    tenant's waiting jobs: running and failed)."""
    if with_work_only:
        pipe = rq_redis.pipeline(transaction=False)
        for level in LEVELS:
            pipe.zrange(tenants_key(pool, level), 0, -1)
        levels = zip(LEVELS, pipe.execute(), strict=True)
        return [pool] + [f"{pool}.{level}.{tag.decode()}" for level, tags in levels for tag in tags]
    known = (q.name for q in Queue.all(connection=rq_redis))
    return [pool] + sorted(name for name in known if name != pool and pool_of(name) == pool)


def forget_idle_queues(rq_redis: redis.Redis, names: Sequence[str]) -> int:
    """Drop from RQ's set of queues the derived queues with nothing in their list or any registry, so
    that what counts and cleans every queue of a pool (`pool_counts`, the workers' upkeep) costs as
    many queues as tenants with recent jobs, not every tenant ever seen. Atomic per queue; an enqueue
    adds its queue back (RQ's enqueue does). Returns how many were dropped."""
    derived = [name for name in names if pool_of(name) != name]
    args = [Queue.redis_queues_keys]
    for name in derived:
        args += [QUEUE_PREFIX + name, *(registry.key_template.format(name) for registry in REGISTRIES)]
    return int(rq_redis.eval(FORGET, 0, *args)) if derived else 0


def tenant_queues(pool: str, tenant: str) -> list[str]:
    """Every queue a task of `tenant`'s video on `pool` can wait in, the plain pool queue included
    (where jobs queued before the upgrade wait)."""
    return [pool, task_queue(pool, tenant, True), task_queue(pool, tenant, False)]


def waiting_job_ids(rq_redis: redis.Redis, names: Sequence[str]) -> set[str]:
    """The ids of the jobs waiting in these queues: one pipeline of one LRANGE per queue."""
    pipe = rq_redis.pipeline(transaction=False)
    for name in sorted(set(names)):
        pipe.lrange(QUEUE_PREFIX + name, 0, -1)
    return {job_id.decode() for ids in pipe.execute() for job_id in ids}


def pool_counts(rq_redis: redis.Redis, pool: str) -> dict[str, int]:
    """A pool's jobs over all its queues: waiting in the lists, running in the StartedJobRegistries
    (which KEDA's LLEN never sees), failed in the FailedJobRegistries, and `first`: how many of the
    queued ones a user waits for to play (first chunks, audio). Two round trips: the list of RQ's queues, then
    one pipeline of O(1) counts, three per queue. Registries are counted as they stand; the workers'
    upkeep (`FarmWorker.clean_registries`) clears abandoned entries every maintenance interval."""
    names = pool_queues(rq_redis, pool, with_work_only=False)
    pipe = rq_redis.pipeline(transaction=False)
    for name in names:
        pipe.llen(QUEUE_PREFIX + name)
        pipe.zcard(StartedJobRegistry.key_template.format(name))
        pipe.zcard(FailedJobRegistry.key_template.format(name))
    counts = pipe.execute()
    totals = {"queued": 0, "running": 0, "failed": 0, FIRST: 0}
    for index, name in enumerate(names):
        queued, running, failed = counts[3 * index:3 * index + 3]
        totals["queued"] += queued
        totals["running"] += running
        totals["failed"] += failed
        if name.startswith(f"{pool}.{FIRST}."):
            totals[FIRST] += queued
    return totals


class Dispatcher:
    """Takes the next job id for a worker serving `pools`: first chunks first, round-robin across
    tenants, then the plain pool queues (see the module docstring)."""

    def __init__(self, rq_redis: redis.Redis, pools: Sequence[str]) -> None:
        self.redis = rq_redis
        self.pools = list(pools)
        self.last_tag = ""
        self._script = rq_redis.register_script(DISPATCH)
        self._keys = [tenants_key(pool, level) for pool in self.pools for level in LEVELS]

    def pop(self) -> tuple[str, str] | None:
        """(queue name, job id) of the next job, taken off its queue; None when every queue is empty."""
        found = self._script(keys=self._keys, args=[QUEUE_PREFIX, self.last_tag, *self.pools], client=self.redis)
        if not found:
            return None
        name, job_id, tag = (part.decode() for part in found)
        if tag:
            self.last_tag = tag
        return name, job_id

    def take(self, wait_s: float | None) -> tuple[str, str] | None:
        """`pop`, or wait up to `wait_s` (None: not at all) for a doorbell and pop again. A worker
        that a doorbell woke and that found a job rings for the next idle one: the burst that rang
        may have more jobs."""
        deadline = time.monotonic() + (wait_s or 0)
        woken = False
        while True:
            popped = self.pop()
            left = deadline - time.monotonic()
            if popped is None and wait_s is not None and left > 0:
                popped = self.wait(left)
                if popped == RANG:
                    woken = True
                    continue
            if popped is not None and woken:
                self.ring()
            return popped

    def wait(self, timeout_s: float) -> tuple[str, str] | None:
        """Block until a doorbell rings (RANG: pop again) or a job reaches a plain pool queue (that
        job, taken), at most `timeout_s` (None)."""
        keys = [doorbell_key(p) for p in self.pools] + [QUEUE_PREFIX + p for p in self.pools]
        found = self.redis.blpop(keys, timeout_s)
        if found is None:
            return None
        key, value = (part.decode() for part in found)
        if key.startswith(QUEUE_PREFIX):
            return key[len(QUEUE_PREFIX):], value
        return RANG

    def ring(self) -> None:
        """Wake the next idle worker: there may be more jobs than the one just taken."""
        pipe = self.redis.pipeline(transaction=False)
        for pool in self.pools:
            ring(pipe, pool)
        pipe.execute()
