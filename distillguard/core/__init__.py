"""Shared vocabulary every stage uses: contract schema, errors, verdict types, the Detector protocol, config, atomic I/O."""
