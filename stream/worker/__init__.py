"""The live driver: a thin Faust shell around the core (decode bytes, call the core, send)."""
