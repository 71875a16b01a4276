"""Scenarios: replay a recorded incident, check the result against its expectations, generate new ones."""
