"""`vidfarm top`: the scaling picture in a terminal, for people without Grafana."""

from __future__ import annotations

import time
from collections import deque
from datetime import datetime
from typing import Any

import click

from vidfarm.client import Client

RECENT_DECISIONS = 8


def render(farm: dict[str, Any], decisions: deque[str]) -> str:
    lines = [f"vidfarm top — {datetime.now():%H:%M:%S}  (Ctrl-C to quit)", ""]
    lines.append(f"{'QUEUE':<12}{'QUEUED':>8}{'RUNNING':>9}{'FAILED':>8}")
    for name, counts in farm["queues"].items():
        lines.append(f"{name:<12}{counts['queued']:>8}{counts['running']:>9}{counts['failed']:>8}")
    pools = (farm.get("autoscaler") or {}).get("pools", {})
    lines += ["", f"{'POOL':<12}{'MIN':>5}{'MAX':>5}{'DESIRED':>9}{'CURRENT':>9}  LAST DECISION"]
    for name, pool in pools.items():
        last = pool.get("last_decision") or {}
        lines.append(f"{name:<12}{pool['min']:>5}{pool['max']:>5}{pool['desired'] or 0:>9}{pool['current'] or 0:>9}"
                     f"  {last.get('direction', '-')} [{last.get('reason', '-')}]")
    if not pools:
        lines.append("(no autoscaler status yet)")
    lines += ["", f"{'WORKER':<28}{'POOL':<8}{'ENCODER':<9}{'STATE':<10}VIDEO"]
    for w in farm["workers"]:
        video = w["video_id"] or ""
        lines.append(f"{w['name'][:27]:<28}{w.get('pool', ''):<8}{w['encoder']:<9}{w['state']:<10}{video}")
    if not farm["workers"]:
        lines.append("(no workers)")
    lines += ["", "RECENT DECISIONS", *(decisions or ["(none yet)"])]
    return "\n".join(lines)


def remember_decisions(farm: dict[str, Any], decisions: deque[str], seen: dict[str, Any]) -> None:
    for name, pool in ((farm.get("autoscaler") or {}).get("pools") or {}).items():
        last = pool.get("last_decision")
        if last and seen.get(name) != last.get("at"):
            seen[name] = last.get("at")
            stamp = datetime.fromtimestamp(last["at"]).strftime("%H:%M:%S") if last.get("at") else "--:--:--"
            decisions.appendleft(f"{stamp} {name}: {last.get('message') or last.get('reason')}")


def run_top(client: Client, interval_s: float, once: bool) -> None:
    decisions: deque[str] = deque(maxlen=RECENT_DECISIONS)
    seen: dict[str, Any] = {}
    try:
        while True:
            farm = client.farm()
            remember_decisions(farm, decisions, seen)
            screen = render(farm, decisions)
            if once:
                click.echo(screen)
                return
            click.clear()
            click.echo(screen)
            time.sleep(interval_s)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how one leaves top
