"""The search index: one table per search parameter type, replacing ``token_index``.

Each row is one index value of one current resource (``fhir_ctms.search.extract``). The
primary key starts with the resource (so a new version replaces its rows with one range
delete) and, on SQLite, is the table itself (WITHOUT ROWID: one B-tree fewer per row);
one lookup index per table serves the searches. Text values are clipped to 255
characters (a B-tree key has to stay small; longer values compare on their prefix).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_KEY = ("partition", "res_type", "res_id", "param")
#: byte-order comparison on PostgreSQL whatever the database's locale: a prefix search is a
#: range scan [prefix, prefix + U+10FFFF), as on SQLite
_text = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")

#: table -> (value columns, lookup index columns after partition)
TABLES = {
    "search_string": ({"normalised": _text, "exact": _text}, ("res_type", "param", "normalised")),
    "search_token": ({"system": _text, "code": _text, "text": _text}, ("res_type", "param", "code", "system")),
    "search_reference": ({"target_type": sa.String(64), "target_id": _text, "version": _text},
                         ("target_type", "target_id", "param", "res_type")),
    "search_date": ({"low": sa.BigInteger, "high": sa.BigInteger}, ("res_type", "param", "low", "high")),
    "search_number": ({"low": sa.Float, "high": sa.Float}, ("res_type", "param", "low", "high")),
    "search_quantity": ({"system": _text, "code": _text, "low": sa.Float, "high": sa.Float},
                        ("res_type", "param", "code", "low")),
    "search_uri": ({"uri": _text}, ("res_type", "param", "uri")),
}


def upgrade() -> None:
    for name, (values, lookup) in TABLES.items():
        op.create_table(
            name,
            sa.Column("partition", sa.String(64), nullable=False),
            sa.Column("res_type", sa.String(64), nullable=False),
            sa.Column("res_id", sa.String(64), nullable=False),
            sa.Column("param", sa.String(64), nullable=False),
            *(sa.Column(col, kind, nullable=False) for col, kind in values.items()),
            sa.PrimaryKeyConstraint(*_KEY, *values, name=f"pk_{name}"),
            sqlite_with_rowid=False,
        )
        op.create_index(f"ix_{name}_lookup", name, ["partition", *lookup, "res_id"])
    op.execute("INSERT INTO search_token (partition, res_type, res_id, param, system, code, text) "
               "SELECT DISTINCT partition, res_type, res_id, param, system, code, '' FROM token_index")
    op.drop_table("token_index")


def downgrade() -> None:
    op.create_table(
        "token_index",
        sa.Column("partition", sa.String(64), nullable=False),
        sa.Column("res_type", sa.String(64), nullable=False),
        sa.Column("res_id", sa.String(64), nullable=False),
        sa.Column("param", sa.String(64), nullable=False),
        sa.Column("system", sa.Text, nullable=False),
        sa.Column("code", sa.Text, nullable=False),
    )
    op.create_index("ix_token_index_lookup", "token_index", ["partition", "res_type", "param", "code", "system"])
    op.create_index("ix_token_index_resource", "token_index", ["partition", "res_type", "res_id"])
    op.execute("INSERT INTO token_index SELECT partition, res_type, res_id, param, system, code FROM search_token "
               "WHERE param = 'identifier'")
    for name in TABLES:
        op.drop_table(name)
