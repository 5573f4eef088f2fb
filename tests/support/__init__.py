"""Shared test fixtures that are not tests themselves."""
