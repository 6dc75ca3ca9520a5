"""The hash chain over audit records and its verification (``fhir-ctms audit verify``).

Each link stores ``content_hash`` = SHA-256 of the record's canonical JSON
(sorted keys, so the same whatever database rendered it), ``prev_hash`` = the
chain hash of its predecessor, ``chain_hash`` = SHA-256(prev_hash ||
content_hash), and its ``position`` (its predecessor's plus one; unique, so two
records can never claim the same predecessor). Changing, removing or reordering
any record breaks the first link after it. (Truncating the newest links is only visible against a head
hash kept elsewhere: ``verify`` reports the head so it can be recorded.)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ..resources.json import canonical, loads
from ..storage.repository import GENESIS, ChainLink, Repository, Session



def content_hash(resource: dict) -> str:
    return hashlib.sha256(canonical(resource)).hexdigest()


def chain_hash(prev_hash: str, digest: str) -> str:
    return hashlib.sha256((prev_hash + digest).encode()).hexdigest()


async def append(session: Session, rtype: str, rid: str, resource: dict) -> None:
    """Add a record to the chain (inside the transaction that stores it)."""
    head = await session.chain_head()
    digest = content_hash(resource)
    await session.append_link(ChainLink(0, rtype, rid, digest, head.hash, chain_hash(head.hash, digest),
                                        head.position + 1))


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    checked: int
    head: str
    broken_seq: int | None = None
    broken_record: str | None = None
    problem: str | None = None


async def verify(repo: Repository, batch: int = 1000) -> Verdict:
    """Walk the whole chain in order; stop at the first broken link."""
    prev, position, checked = GENESIS, 0, 0
    while True:
        async with repo.session(write=False) as s:
            links = await s.links(position, batch)
            for link in links:
                where = f"{link.type}/{link.id}"
                problem = None
                stored = await s.version(link.type, link.id, 1)
                if link.position != position + 1:
                    problem = (f"its position {link.position} does not follow its predecessor's ({position}): "
                               "a link was removed")
                elif link.prev_hash != prev:
                    problem = "its predecessor hash does not match the previous link (a link was removed or reordered)"
                elif link.chain_hash != chain_hash(link.prev_hash, link.content_hash):
                    problem = "its chain hash is not the hash of its predecessor and content hashes"
                elif stored is None or stored.content is None:
                    problem = "the audit record it covers is missing"
                elif content_hash(loads(stored.content)) != link.content_hash:
                    problem = "the audit record was altered after it was written"
                if problem:
                    return Verdict(False, checked, prev, link.seq, where, problem)
                prev, position, checked = link.chain_hash, link.position, checked + 1
        if len(links) < batch:
            return Verdict(True, checked, prev)
