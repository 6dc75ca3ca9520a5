"""Persistence: one repository interface (``repository``) and its SQL implementation (``sql``)."""
