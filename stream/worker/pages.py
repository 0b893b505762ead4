"""The worker's web pages for the people around it: `/metrics` (Prometheus), the
customer-service lookup (`/qris/payments/{reference}`, `/qris/accounts/{account_id}/payments`)
and `/qris/dashboard`.

The lookup is answered from live state by the worker that owns the reference's partition. A
worker asked for a reference it does not hold asks every other worker of the group (their URLs
come from Faust's assignment metadata, `app.router.tables_metadata()`), marking the request as
forwarded so it is never forwarded again; account queries are answered by every worker and
merged. The API is off without `QRIS_API_TOKEN` and needs `Authorization: Bearer <token>`; a
forwarded query carries a signature of itself made with the token (`lookup.forward_signature`),
not the token.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
import faust

from ..core.eventtime import BadTimestamp, parse_instant
from ..security import read_secret
from ..settings import Settings
from . import dashboard
from .lookup import (
    API_OFF,
    account_answer,
    account_path,
    account_payments,
    forward_ok,
    forward_signature,
    from_peers,
    lookup_reference,
    not_found,
    not_ready_here,
    parse_limit,
    payment_path,
    question_of,
    token_ok,
)
from .metrics import CONTENT_TYPE, WorkerMetrics
from .shell import ReconcileShell
from .watch import WorkerWatch

log = logging.getLogger("qris_guard.worker")

FORWARDED = "X-QRIS-Forwarded"


def add_pages(
    app: faust.App, settings: Settings, shell: ReconcileShell, watch: WorkerWatch, metrics: WorkerMetrics
) -> None:
    # Read once, at start: a file that cannot be read stops the worker with one line.
    api_token = read_secret("QRIS_API_TOKEN_FILE", settings.api_token, settings.api_token_file)

    def peers() -> list[str]:
        own = str(app.conf.canonical_url).rstrip("/")
        try:
            hosts = app.router.tables_metadata().keys()
        except Exception:  # no assignment yet
            return []
        return sorted({str(h).rstrip("/") for h in hosts} - {own})

    async def ask(urls: list[str], path: str, question: str) -> list[tuple[int, Any]]:
        headers = {FORWARDED: forward_signature(api_token, question, int(time.time()))}
        timeout = aiohttp.ClientTimeout(total=3)

        async def one(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
            try:
                async with session.get(url + path, headers=headers) as resp:
                    body = await resp.json(content_type=None)
                    if resp.status == 404 and isinstance(body, dict) and body.get("error") == API_OFF:
                        # (It is named as not answering; the log says why, for whoever runs it.)
                        log.warning("lookup: peer %s has the lookup API off (no QRIS_API_TOKEN there)", url)
                    return resp.status, body
            except Exception as exc:  # a peer that is gone is not an answer
                log.warning("lookup: peer %s did not answer (%s)", url, type(exc).__name__)
                return 599, None

        async with aiohttp.ClientSession(timeout=timeout) as session:
            return list(await asyncio.gather(*(one(session, u) for u in urls)))

    def forwarded(request: Any, question: str) -> bool:
        # A peer's question only when its signature holds: a caller's own `X-QRIS-Forwarded`
        # (any value, beside a valid bearer token) is no peer's, and must not stop the fan-out
        # (it would be told "unknown reference" for a payment another worker holds).
        return forward_ok(api_token, question, request.headers.get(FORWARDED), time.time())

    def refused(web: Any, request: Any, signed: bool) -> Any | None:
        if not api_token:
            return web.json({"error": API_OFF}, status=404)
        if not (signed or token_ok(api_token, request.headers.get("Authorization"))):
            return web.json(
                {"error": "a valid bearer token is required"}, status=401, headers={"WWW-Authenticate": "Bearer"}
            )
        return None

    @app.page("/metrics")
    async def prometheus_metrics(web: Any, request: Any) -> Any:
        return web.bytes(metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    @app.page("/qris/payments/{reference}")
    async def payment_lookup(web: Any, request: Any, reference: str) -> Any:
        question = question_of("payment", reference)
        signed = forwarded(request, question)
        no = refused(web, request, signed)
        if no is not None:
            return no
        found = lookup_reference(shell.engines, reference, watch)
        # (Only rejected records of it here: its state may be on another worker.)
        if found is not None and found.get("status") != "rejected":
            return web.json(found)
        # (This worker restoring the partition the payment may be on is no answer either.)
        not_ready = not_ready_here(watch.owned, shell.engines)
        answers: list[tuple[str, int, Any]] = [] if not_ready is None else [(not_ready, 503, None)]
        if not signed:
            urls = peers()
            answers += [
                (u, st, body)
                for u, (st, body) in zip(urls, await ask(urls, payment_path(reference), question), strict=True)
            ]
        found, unanswered = from_peers(found, answers, watch)
        if found is not None:
            return web.json(found)
        body, status = not_found(reference, round(settings.retention_s * 1000), unanswered)
        return web.json(body, status=status)

    @app.page("/qris/accounts/{account_id}/payments")
    async def account_lookup(web: Any, request: Any, account_id: str) -> Any:
        since = request.query.get("since")
        question = question_of("account", account_id, since)
        signed = forwarded(request, question)
        no = refused(web, request, signed)
        if no is not None:
            return no
        try:
            since_ms = parse_instant(since) if since else None
        except BadTimestamp as exc:
            # (A `+` in a URL's query is a space: `since=...+07:00` arrives as `... 07:00`.)
            plus = " (a '+' in a URL query reads as a space: write it %2B)" if since and " " in since else ""
            return web.json({"error": f"since: {exc}{plus}"}, status=400)
        try:
            limit = parse_limit(request.query.get("limit"))
        except ValueError as exc:
            return web.json({"error": str(exc)}, status=400)
        payments, total = account_payments(shell.engines, watch, account_id, since_ms, limit)
        not_ready = not_ready_here(watch.owned, shell.engines)
        unanswered: list[str] = [] if not_ready is None else [not_ready]
        if not signed:
            urls = peers()
            for url, (status, body) in zip(
                urls, await ask(urls, account_path(account_id, since, limit), question), strict=True
            ):
                if status == 200 and isinstance(body, dict):
                    theirs = body.get("payments", [])
                    payments.extend(theirs)
                    total += int(body.get("total", len(theirs)))
                    # A peer restoring a partition answers what it holds and names itself as not
                    # answering for the rest (`not_ready_here`): so is it named here.
                    named = body.get("unanswered_workers")
                    if isinstance(named, list):
                        unanswered.extend(url + str(n).removeprefix("this worker") for n in named)
                else:
                    unanswered.append(url)
            payments.sort(key=lambda x: (x.get("first_seen_ms") or 0, x.get("reference") or ""), reverse=True)
            del payments[limit:]
        return web.json(account_answer(payments, total, limit, unanswered))

    @app.page("/qris/dashboard")
    async def ops_dashboard(web: Any, request: Any) -> Any:
        return web.html(dashboard.render(watch, dict(shell.engines), time.time(), settings.app_id))
