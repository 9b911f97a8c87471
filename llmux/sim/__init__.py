"""Scheduling simulation support: request traces read from files or generated."""
