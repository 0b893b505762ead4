"""Per-partition burst signals: what happened to each payment shortly after it was requested,
counted per scope and event-time minute, for the burst detector (`burst`).

A payment is judged at a short *probe age* after its `requested` record (30 s by default),
from the records processed by then: settled (good), failed, debited but not answered
(unsettled, rupiah exposed), or not answered at all. These leading indicators do not wait for
the refund timeout. A minute of requests is closed once the partition's watermark has passed
its end plus the probe age: every request of the minute and every record up to its probe time
has been processed by then, so the counts depend only on the partition's records, not on
timing. Each partition reports closed minutes and how far it has closed (`through`); the
detector combines the partitions. Imports nothing outside the core.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from hashlib import blake2b
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Final

from . import codec
from .decisions import Decision, mask_account
from .text import escape_controls

if TYPE_CHECKING:
    from .reference import ReferenceState

MINUTE_MS: Final = 60_000
SAMPLES_PER_SCOPE: Final = 3
# Response codes of failures, per scope-minute and per incident: at most CODES_KEPT distinct
# ones, each cut to CODE_MAX_CHARS characters, the rest counted together as OTHER_CODES (a
# response code is free text: input must not make a signal or an alert too large to send).
CODES_KEPT: Final = 20
CODE_MAX_CHARS: Final = 16
OTHER_CODES: Final = "(other)"
# Other scopes a scope-minute's bad payments share (`w`, for attribution): at most this many
# distinct ones, the most shared with (identifiers are up to 128 characters; random ones must not
# make one scope-minute as large as a record may be). Past a few, attribution has nothing to say.
SHARED_KEPT: Final = 200
# A partition's report of the minutes it closed is one record of the signals topic; at a
# national switch's volume a partition-minute has tens of thousands of merchants (a 1.7 MB
# report at 23,000 requests a partition-minute over 200,000 merchants), past Kafka's 1 MiB. A
# report larger than this many bytes of JSON is sent in parts (`signals_decisions`).
SIGNALS_PART_MAX_BYTES = 512 * 1024
# A merchant pool's id is `MCC-` and its MCC (free text too), escaped and cut to this long.
POOL_MCC_MAX_CHARS: Final = 16


def pool_id(mcc: str | None) -> str:
    r"""The scope id of the pool of small merchants of `mcc` (`MCC-unknown` for none).

    >>> pool_id("5812"), pool_id(None), pool_id("59\x1b[2J")
    ('MCC-5812', 'MCC-unknown', 'MCC-59\\u001b[2J')
    """
    return "MCC-" + escape_controls(mcc or "unknown", POOL_MCC_MAX_CHARS)


def merchant_scope_id(merchant_id: str) -> str:
    r"""A merchant's scope id: its `merchant_id`, with a backslash before it when it begins with
    `MCC-` (the pools' ids) or a backslash, so that no merchant is taken for a pool (one-to-one:
    a merchant's id can always be read back).

    >>> merchant_scope_id("ID1020"), merchant_scope_id("MCC-5999"), merchant_scope_id("\\MCC-5999")
    ('ID1020', '\\MCC-5999', '\\\\MCC-5999')
    """
    return "\\" + merchant_id if merchant_id.startswith(("MCC-", "\\")) else merchant_id


def capped_codes(codes: dict[str, int]) -> dict[str, int]:
    """`codes` with at most CODES_KEPT entries: the CODES_KEPT - 1 most frequent codes (ties by
    code: the same whatever order `codes` was built in) and the rest counted as OTHER_CODES.

    >>> capped_codes({f"{i:02d}": i for i in range(1, 23)})[OTHER_CODES]  # 01, 02 and 03 left
    6
    """
    if len(codes) <= CODES_KEPT:
        return codes
    rest = dict(codes)
    other = rest.pop(OTHER_CODES, 0)
    kept = dict(_most(rest, CODES_KEPT - 1))
    kept[OTHER_CODES] = other + sum(rest.values()) - sum(kept.values())
    return kept


def add_codes(into: dict[str, int], codes: dict[str, int]) -> dict[str, int]:
    """`into` plus `codes`, bounded as `capped_codes` (an incident's codes, minute after minute)."""
    merged = dict(into)
    for code, n in codes.items():
        merged[code] = merged.get(code, 0) + n
    return capped_codes(merged)


# Counter slots of one scope-minute (a list, kept small and JSON-ready).
# (`Final`, here and below: compiled, a constant or a C static, not a look-up in the module's
# dict at each use.)
N: Final = 0
BAD: Final = 1
FAILED: Final = 2
UNSETTLED: Final = 3
NO_ANSWER: Final = 4
EXPOSURE: Final = 5
COUNTS = ("payments", "bad", "failed", "unsettled", "no_answer", "exposure_idr")

GOOD: Final = "settled"
FAILED_OUTCOME: Final = "failed"
UNSETTLED_OUTCOME: Final = "unsettled"
NO_ANSWER_OUTCOME: Final = "no_answer"


@dataclass(frozen=True, slots=True)
class Outcome:
    """A payment at its probe age: `state` is settled | failed | unsettled | no_answer."""

    state: str
    exposure_idr: int = 0
    response_code: str | None = None

    def __reduce__(self) -> tuple[type[Outcome], tuple[Any, ...]]:
        # Rebuilt by its constructor when pickled: see `partition.Params.__reduce__`.
        return Outcome, tuple(getattr(self, f.name) for f in fields(self))


# The two outcomes without details, built once: a replay judges every payment.
_SETTLED: Final = Outcome(GOOD)
_NO_ANSWER: Final = Outcome(NO_ANSWER_OUTCOME)


def judge(st: ReferenceState, probe_at_ms: int) -> Outcome:
    """What the payment looked like at `probe_at_ms`, from its records with effective time at or
    before it (records processed later are ignored, so a later check gives the same answer).
    """
    if st.settlement is not None and st.settlement.effective_at_ms <= probe_at_ms:
        return _SETTLED
    if st.failure is not None and st.failure.effective_at_ms <= probe_at_ms:
        return Outcome(FAILED_OUTCOME, response_code=st.failure.response_code)
    debited = sum(d.amount for d in st.debits if d.effective_at_ms <= probe_at_ms)
    if debited:
        reversed_ = sum(r.amount for r in st.reversals if r.effective_at_ms <= probe_at_ms)
        return Outcome(UNSETTLED_OUTCOME, exposure_idr=max(0, debited - reversed_))
    return _NO_ANSWER


def scope_keys(st: ReferenceState) -> tuple[str, ...]:
    """The scopes a payment belongs to, as `type:id` keys (`all` has no id). Scopes whose id the
    request does not carry are left out."""
    rq = st.request
    assert rq is not None
    ids = (rq.issuer_id, rq.switch_id, rq.acquirer_id, rq.merchant_id)
    keys = _SCOPE_KEYS.get(ids)
    if keys is None:
        made = ["all"]
        if rq.issuer_id:
            made.append("issuer:" + rq.issuer_id)
        if rq.switch_id:
            made.append("switch:" + rq.switch_id)
        if rq.acquirer_id:
            made.append("acquirer:" + rq.acquirer_id)
        if rq.merchant_id:
            made.append("merchant:" + merchant_scope_id(rq.merchant_id))
        keys = tuple(made)
        if len(_SCOPE_KEYS) >= _SCOPE_KEYS_MAX:
            _SCOPE_KEYS.clear()
        _SCOPE_KEYS[ids] = keys
    return keys


# (issuer, switch, acquirer, merchant) of requests judged -> their scope keys, made once: four
# concatenations a payment fewer, and keys that keep their hash for the scope-minute lookups
# (a signal judges every payment; few distinct combinations). Emptied when full.
_SCOPE_KEYS: Final[dict[tuple[str | None, ...], tuple[str, ...]]] = {}
_SCOPE_KEYS_MAX: Final = 65_536


def new_scope_minute() -> dict[str, Any]:
    """An empty scope-minute: its counts (`c`). Only a scope-minute with bad payments gets the
    bad payments shared with other scopes (`w`), response codes of failures (`k`) and samples
    (`s`: [request ms, reference, state, masked account]); merchants also carry attributes
    (`a`: [mcc, acquirer, name]). Most scope-minutes have no bad payment, and a replay keeps
    them all, so they stay one dict and one list."""
    return {"c": [0, 0, 0, 0, 0, 0]}


def count_payment(minute: dict[str, dict[str, Any]], st: ReferenceState, outcome: Outcome, probe_at_ms: int) -> None:
    """Add one judged payment (`outcome`: `judge(st, probe_at_ms)`) to every scope it belongs to
    in `minute`."""
    rq = st.request
    assert rq is not None and st.request_eff_ms is not None
    keys = scope_keys(st)
    if outcome.state == GOOD:
        # Most payments: the count only (one pass, no checks per scope).
        for key in keys:
            sm = minute.get(key)
            if sm is None:
                sm = minute[key] = {"c": [1, 0, 0, 0, 0, 0]}  # `new_scope_minute`, counted
                if key.startswith("merchant:"):
                    sm["a"] = [rq.mcc or "", rq.acquirer_id or "", rq.merchant_name or ""]
            else:
                sm["c"][N] += 1
                if key.startswith("merchant:"):
                    _least_attributes(sm, rq)
        return
    state = outcome.state
    # The payment's sample (each scope keeps its own copy), with the account as of the probe,
    # as its state is: the first debit's when it came by then, else the request's. (A debit
    # after the probe is processed or not when the minute closes depending on how far the
    # watermark got, which depends on how the two topics interleave.)
    debits = st.debits
    account = st.account_id if debits and debits[0].effective_at_ms <= probe_at_ms else rq.account_id
    sample = [st.request_eff_ms, st.reference, state, mask_account(account)]
    for key in keys:
        sm = minute.get(key)
        if sm is None:
            sm = minute[key] = {"c": [0, 0, 0, 0, 0, 0]}  # `new_scope_minute`
            if key.startswith("merchant:"):
                sm["a"] = [rq.mcc or "", rq.acquirer_id or "", rq.merchant_name or ""]
        elif key.startswith("merchant:"):
            _least_attributes(sm, rq)
        c = sm["c"]
        c[N] += 1
        c[BAD] += 1
        if state == FAILED_OUTCOME:
            c[FAILED] += 1
            code = (outcome.response_code or "?")[:CODE_MAX_CHARS]
            codes = sm.setdefault("k", {})  # (bounded when the minute closes: `close_scope_minutes`)
            codes[code] = codes.get(code, 0) + 1
        elif state == UNSETTLED_OUTCOME:
            c[UNSETTLED] += 1
            c[EXPOSURE] += outcome.exposure_idr
        else:
            c[NO_ANSWER] += 1
        if key != "all":
            # Bad payments shared with other scopes, for attribution: a merchant records all
            # its other scopes, the others record each other but not merchants.
            with_ = sm.setdefault("w", {})
            merchant = key.startswith("merchant:")
            for other in keys:
                if other != key and other != "all" and (merchant or not other.startswith("merchant:")):
                    with_[other] = with_.get(other, 0) + 1
        samples = sm.setdefault("s", [])
        if len(samples) < SAMPLES_PER_SCOPE or sample[:2] < samples[-1][:2]:
            samples.append(list(sample))
            samples.sort(key=_SAMPLE_ORDER)
            del samples[SAMPLES_PER_SCOPE:]


# Samples in (request ms, reference) order.
_SAMPLE_ORDER: Final = itemgetter(0, 1)


def _least_attributes(sm: dict[str, Any], rq: Any) -> None:
    # A merchant's attributes in a minute: the least of its payments' (as `merge_scope_minute`
    # takes them across partitions), whatever order the payments are judged in (a restored
    # engine judges a minute's payments in another order than one that ran through).
    a = sm["a"]
    mcc, acquirer, name = rq.mcc or "", rq.acquirer_id or "", rq.merchant_name or ""
    if (mcc != a[0] or acquirer != a[1] or name != a[2]) and [mcc, acquirer, name] < a:
        sm["a"] = [mcc, acquirer, name]


def _most(counts: dict[str, int], n: int) -> list[tuple[str, int]]:
    """The `n` largest counts, ties by key: the same whatever order `counts` was built in."""
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def close_scope_minutes(scopes: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A closed minute's scope-minutes with their response codes and shared scopes bounded:
    the CODES_KEPT - 1 most frequent codes and the rest as OTHER_CODES, the SHARED_KEPT scopes
    most shared with (ties by name). Applied once the minute is counted, so the result does not
    depend on the order its payments were judged in."""
    for sm in scopes.values():
        codes = sm.get("k")
        if codes is not None:
            sm["k"] = capped_codes(codes)
        shared = sm.get("w")
        if shared is not None and len(shared) > SHARED_KEPT:
            sm["w"] = dict(_most(shared, SHARED_KEPT))
    return scopes


def merge_scope_minute(into: dict[str, Any], other: dict[str, Any]) -> None:
    """Add `other` (the same scope and minute from another partition) to `into`; the result does
    not depend on the order of merging. Only `into["c"]` is changed in place: the other parts
    are replaced, never modified, so `into` may share them with its source."""
    ic, oc = into["c"], other["c"]
    for i in range(len(oc)):
        ic[i] += oc[i]
    if oc[BAD]:  # shared scopes, codes and samples exist only for bad payments
        for part in ("w", "k"):
            if other.get(part):
                merged = dict(into.get(part) or {})
                for k, v in other[part].items():
                    merged[k] = merged.get(k, 0) + v
                into[part] = merged
        if other.get("s"):
            samples = sorted([*into.get("s", ()), *other["s"]], key=_SAMPLE_ORDER)
            into["s"] = samples[:SAMPLES_PER_SCOPE]
    if "a" in other and ("a" not in into or other["a"] < into["a"]):
        into["a"] = other["a"]


def scope_minute_view(sm: dict[str, Any]) -> dict[str, Any]:
    """A scope-minute to merge others into, sharing all but its counts with `sm`."""
    view = dict(sm)
    view["c"] = list(sm["c"])
    return view


def signals_decisions(
    partition: int, through_minute: int, minutes: dict[int, dict[str, Any]], max_bytes: int | None = None
) -> list[Decision]:
    """The partition's report: the scope-minutes it closed, and that every minute up to
    `through_minute` is closed (minutes without requests included). One record, or, when its
    JSON is larger than `max_bytes` (`SIGNALS_PART_MAX_BYTES`), parts (`part` i of `parts` n,
    each with `through_minute` and `report`, a digest of the whole report): the scope-minutes
    shared out in (minute, scope) order, each once, a minute with no scopes listed once (each
    part's bytes count its minutes' own, so a report closing thousands of minutes after a
    watermark stood still for days stays in parts of at most `max_bytes`). The split depends only
    on the report's content (not the order its payments were judged in), and the detector puts
    together only parts of the same report (`merge.PartitionMerge`): a sender stopped half way
    that sends the report again, or a second sender's report, never mixes with it."""
    value = {
        "partition": partition,
        "through_minute": through_minute,
        "minutes": [{"minute": m, "scopes": minutes[m]} for m in sorted(minutes)],
    }
    at_ms = None if through_minute >= 2**40 else (through_minute + 1) * MINUTE_MS
    key = str(partition).encode()
    if max_bytes is None:
        max_bytes = SIGNALS_PART_MAX_BYTES
    if len(codec.dumps(value)) <= max_bytes:
        return [Decision("signals", key, value, at_ms)]
    envelope = 200  # a part's fields but its minutes (about; bytes)
    parts: list[dict[int, dict[str, Any]]] = [{}]
    size = envelope
    for m in sorted(minutes):
        scopes = minutes[m]
        entry = len(codec.dumps({"minute": m, "scopes": {}})) + 1  # a minute's own bytes in a part
        listed: list[str | None] = [*sorted(scopes)] or [None]  # (a minute without scopes: once, empty)
        for scope in listed:
            n = 0 if scope is None else len(codec.dumps({scope: scopes[scope]}))  # bytes, as sent
            if size > envelope and size + n + (0 if m in parts[-1] else entry) > max_bytes:
                parts.append({})
                size = envelope
            if m not in parts[-1]:
                n += entry
            in_part = parts[-1].setdefault(m, {})
            if scope is not None:
                in_part[scope] = scopes[scope]
            size += n
    if len(parts) == 1:
        return [Decision("signals", key, value, at_ms)]
    # The digest names the split too ("/2": parts that count each minute's bytes): parts
    # of one report split by an older version (a sender not yet upgraded) are never put together
    # with these, which cut it elsewhere.
    report = blake2b(codec.dumps_sorted(value), digest_size=12).hexdigest() + "/2"
    return [
        Decision(
            "signals",
            key,
            {
                "partition": partition,
                "through_minute": through_minute,
                "report": report,
                "part": i,
                "parts": len(parts),
                "minutes": [{"minute": m, "scopes": part[m]} for m in sorted(part)],
            },
            at_ms,
        )
        for i, part in enumerate(parts)
    ]
