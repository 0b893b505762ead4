"""qris-guard: the streaming QRIS reconciliation detector (README). `BUILD` says which build of
this package runs, "source" or "compiled" (`make compiled`); importing a compiled copy whose
sources changed since it was built fails (`buildinfo`)."""

from .buildinfo import BUILD

__all__ = ["BUILD"]
