"""The SMART App Launch authorization server: clients, users, codes, refresh tokens, launch
handles, the client-assertion ``jti`` replay cache, revoked access tokens and the server's
signing keys (``fhir_ctms/storage/auth_store.py``).

Server-wide tables (no ``partition``): clients, users and keys belong to the server. Times are
UNIX seconds; secrets, codes, handles and refresh tokens are stored as hashes only.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "auth_clients",
        sa.Column("client_id", sa.String(128), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("secret_hash", sa.Text, nullable=True),
        sa.Column("redirect_uris", sa.Text, nullable=False),
        sa.Column("scopes", sa.Text, nullable=False),
        sa.Column("jwks", sa.Text, nullable=True),
        sa.Column("jwks_uri", sa.Text, nullable=True),
        sa.Column("created", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "auth_users",
        sa.Column("username", sa.String(128), primary_key=True),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("fhir_user", sa.Text, nullable=True),
        sa.Column("patients", sa.Text, nullable=False),
        sa.Column("created", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "auth_codes",
        sa.Column("code_hash", sa.String(64), primary_key=True),
        sa.Column("client_id", sa.String(128), nullable=False),
        sa.Column("grant_json", sa.Text, nullable=False),
        sa.Column("expires", sa.BigInteger, nullable=False),
        sa.Column("used", sa.Boolean, nullable=False),
    )
    op.create_table(
        "auth_refresh_tokens",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("family", sa.String(64), nullable=False),
        sa.Column("client_id", sa.String(128), nullable=False),
        sa.Column("grant_json", sa.Text, nullable=False),
        sa.Column("expires", sa.BigInteger, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
    )
    op.create_index("ix_auth_refresh_tokens_family", "auth_refresh_tokens", ["family"])
    op.create_table(
        "auth_launches",
        sa.Column("handle_hash", sa.String(64), primary_key=True),
        sa.Column("client_id", sa.String(128), nullable=True),
        sa.Column("context_json", sa.Text, nullable=False),
        sa.Column("expires", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "auth_jti",
        sa.Column("client_id", sa.String(128), primary_key=True),
        sa.Column("jti", sa.String(255), primary_key=True),
        sa.Column("expires", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "auth_revoked",
        sa.Column("jti", sa.String(64), primary_key=True),
        sa.Column("expires", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "auth_keys",
        sa.Column("kid", sa.String(128), primary_key=True),
        sa.Column("alg", sa.String(16), nullable=False),
        sa.Column("private_jwk", sa.Text, nullable=False),
        sa.Column("created", sa.BigInteger, nullable=False),
        sa.Column("retired", sa.BigInteger, nullable=True),
    )


def downgrade() -> None:
    for name in ("auth_keys", "auth_revoked", "auth_jti", "auth_launches", "auth_refresh_tokens",
                 "auth_codes", "auth_users", "auth_clients"):
        op.drop_table(name)
