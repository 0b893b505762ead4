"""Drivers of the core: the offline replay and the dump tool. (The live driver is `stream.worker`.)"""
