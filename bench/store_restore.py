"""The worker's state store on the real broker: batches committed to the changelog, then a
restore with the disk wiped (the whole changelog partition) and with the disk kept (the tail).

    QRIS_BOOTSTRAP=127.0.0.1:9092 python bench/store_restore.py --batches 200 --changes 250

Writes to a fresh changelog topic (`qris-bench-<id>-state-changelog`, one partition) with the
project's own producer, `--changes` reference entries of `--value-bytes` bytes and the
metadata per batch, each batch awaited as the worker does. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream.security import aiokafka_config  # noqa: E402
from stream.settings import Settings  # noqa: E402
from stream.topics import delete_topics_with_prefix, ensure_state_changelog  # noqa: E402
from stream.worker.statestore import KafkaChangelog, PartitionStore, changelog_topic_name  # noqa: E402


async def run(settings: Settings, batches: int, changes: int, value_bytes: int, keys: int) -> None:
    topic = changelog_topic_name(settings.app_id)
    local = Path(tempfile.mkdtemp(prefix="qris-bench-store-"))
    value = os.urandom(value_bytes)
    writer = PartitionStore(KafkaChangelog(aiokafka_config(settings), topic), local)
    await writer.restore(0)
    started = time.perf_counter()
    for b in range(batches):
        for i in range(changes):
            writer.put(0, b"0/r/%d" % ((b * changes + i) % keys), value)
        writer.put(0, b"0/m", b"meta %d" % b)
        await writer.commit()
    took = time.perf_counter() - started
    messages = batches * (changes + 2)
    rate = f"{batches / took:,.0f} batches/s, {messages / took:,.0f} messages/s"
    print(f"commit: {batches} batches of {changes + 2} messages in {took:.2f} s: {rate}")
    writer.close()
    await writer.changelog.close()  # type: ignore[attr-defined]
    for name, where in (("disk wiped", None), ("disk kept", local)):
        store = PartitionStore(KafkaChangelog(aiokafka_config(settings), topic), where)
        started = time.perf_counter()
        await store.restore(0)
        took = time.perf_counter() - started
        read = store.counts["restored_messages"]
        keys_now = len(store.load(0))
        print(f"restore, {name}: {read} changelog messages in {took:.3f} s ({read / took:,.0f}/s), {keys_now} keys")
        store.close()
        await store.changelog.close()  # type: ignore[attr-defined]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--changes", type=int, default=250, help="reference entries per batch")
    ap.add_argument("--value-bytes", type=int, default=300)
    ap.add_argument("--keys", type=int, default=20_000, help="distinct references")
    args = ap.parse_args()
    settings = Settings(
        bootstrap=os.environ.get("QRIS_BOOTSTRAP", "127.0.0.1:9092"), app_id=f"qris-bench-{uuid.uuid4().hex[:8]}"
    )
    ensure_state_changelog(settings, 1)
    try:
        asyncio.run(run(settings, args.batches, args.changes, args.value_bytes, args.keys))
    finally:
        delete_topics_with_prefix(settings, settings.app_id)


if __name__ == "__main__":
    main()
