"""Shared pytest fixtures for the catga_sync test suite."""
