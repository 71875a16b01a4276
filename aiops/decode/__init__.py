"""Decoding: raw bytes/JSON into typed records, and raw samples into derived series."""
