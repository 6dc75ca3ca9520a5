"""Country names as ClinicalTrials.gov writes them ("United States", "Korea, Republic of") to ISO
3166-1 alpha-2 codes, through pycountry (names, official and common names), with the few registry
names pycountry does not know; and back (:func:`registry_name`), for the export of a study made in
the CTMS, whose sites carry the code only."""

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


#: where the registry's name is not ISO 3166's short name (pycountry's ``name``): the registry
#: writes the common name of these (its location records, e.g. the "Taiwan" sites of
#: shared/data/clinicaltrials-gov), and Kosovo has no ISO code but a user-assigned one
_REGISTRY_NAMES = {
    "TW": "Taiwan",
    "VN": "Vietnam",
    "BO": "Bolivia",
    "VE": "Venezuela",
    "TZ": "Tanzania",
    "XK": "Kosovo",
}


@lru_cache(maxsize=512)
def registry_name(code: str) -> str | None:
    """The name ClinicalTrials.gov gives the country of an ISO 3166-1 alpha-2 (or alpha-3) code,
    or None when the code names no country."""
    key = code.strip().upper()
    if key in _REGISTRY_NAMES:
        return _REGISTRY_NAMES[key]
    country = (pycountry.countries.get(alpha_2=key) if len(key) == 2
               else pycountry.countries.get(alpha_3=key) if len(key) == 3 else None)
    if country is None:
        return None
    return _REGISTRY_NAMES.get(country.alpha_2, country.name)


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
