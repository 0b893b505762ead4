"""The I/O-free core of qris-guard: everything CONTRACT.md decides, as pure functions and values.

Nothing below this package imports faust, aiokafka, kafka-python or mode, reads a clock or the
environment, or touches files and sockets (tests/test_core_purity.py proves it). The live
worker and the offline replay are two drivers of this same core.
"""
