"""Country names as ClinicalTrials.gov writes them ("United States", "Korea, Republic of") to ISO
3166-1 alpha-2 codes, through pycountry (names, official and common names), with the few registry
names pycountry does not know."""

from __future__ import annotations

from functools import lru_cache

import pycountry

#: registry spellings pycountry's lookup misses (older ISO short names)
_ALIASES = {
    "turkey": "TR",
    "macedonia, the former yugoslav republic of": "MK",
    "north macedonia": "MK",
    "swaziland": "SZ",
    "cape verde": "CV",
    "czech republic": "CZ",
    "holy see (vatican city state)": "VA",
    "kosovo": "XK",
}


@lru_cache(maxsize=512)
def alpha2(name: str) -> str | None:
    """The alpha-2 code of a country name, or None when it names no ISO 3166 country."""
    key = name.strip().lower()
    if key in _ALIASES:
        return _ALIASES[key]
    try:
        return pycountry.countries.lookup(name.strip()).alpha_2
    except LookupError:
        return None
