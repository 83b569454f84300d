"""The workflow model: definition format, validation, compilation to IR, patches.

Pure domain code: no clock, no randomness, no I/O beyond reading the packaged
JSON Schema at import.
"""
