"""Simulated issuer-side QRIS traffic for tests, demos and benchmarks, in event time.

``generate`` yields the records of a named scenario; ``write_replay`` and ``produce`` send
them to a replay file or to Kafka; ``add_arguments`` and ``run`` are the ``simulate``
command. Nothing here is imported by the core.
"""

from stream.simulate.cli import add_arguments, run
from stream.simulate.output import produce, replay_line, write_replay
from stream.simulate.partitioner import murmur2, partition_for
from stream.simulate.scenarios import SCENARIOS, Knobs
from stream.simulate.traffic import LEDGER_TOPIC, PAYMENT_TOPIC, SimRecord, generate
from stream.simulate.truth import GroundTruth

__all__ = [
    "LEDGER_TOPIC",
    "PAYMENT_TOPIC",
    "SCENARIOS",
    "GroundTruth",
    "Knobs",
    "SimRecord",
    "add_arguments",
    "generate",
    "murmur2",
    "partition_for",
    "produce",
    "replay_line",
    "run",
    "write_replay",
]
