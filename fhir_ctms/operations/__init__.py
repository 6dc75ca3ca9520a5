"""The operation registry: each operation is declared by its OperationDefinition.

An :class:`Operation` names the OperationDefinition (canonical URL, code, the
resource types and levels it applies to) and its handler; the router and the
CapabilityStatement both read :data:`OPERATIONS`. None are registered yet: the
CTMS operations ($enrollment, $schedule, $milestones, $payments) come with the
CTMS model.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Operation:
    code: str
    url: str
    resource_types: frozenset[str]
    system: bool
    type_level: bool
    instance: bool
    handler: Callable[..., Awaitable[Any]]


OPERATIONS: list[Operation] = []
