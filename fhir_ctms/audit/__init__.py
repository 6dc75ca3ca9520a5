"""The audit trail: a Provenance and an AuditEvent for every change, hash-chained."""
