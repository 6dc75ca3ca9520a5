"""Roles of the login page's users, and failed logins for throttling (``fhir_ctms/auth/roles.py``,
``fhir_ctms/auth/throttle.py``).

``auth_users.roles``: a JSON list of role names (existing users get none: no ``user/`` scopes
until roles are given). ``auth_login_failures``: one row per failed login, once for the username
and once for the network address, kept a little longer than the throttling window; in the
database so that every server process sees the same counts.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("auth_users", sa.Column("roles", sa.Text, nullable=False, server_default="[]"))
    op.create_table(
        "auth_login_failures",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_auth_login_failures_subject_at", "auth_login_failures", ["subject", "at"])


def downgrade() -> None:
    op.drop_index("ix_auth_login_failures_subject_at", table_name="auth_login_failures")
    op.drop_table("auth_login_failures")
    with op.batch_alter_table("auth_users") as batch:  # SQLite drops a column by copying the table
        batch.drop_column("roles")
