"""SMART scopes parsed into plain values (v1, v2, granular) and granted as an intersection; PKCE."""

import base64
import hashlib

import pytest

from fhir_ctms.auth import pkce
from fhir_ctms.auth.errors import OAuthError
from fhir_ctms.auth.scopes import ResourceScope, covers, grant, parse, parse_resource_scope


@pytest.mark.parametrize("text, expected", [
    ("patient/*.read", ResourceScope("patient", "*", "rs", (), True)),
    ("user/Observation.write", ResourceScope("user", "Observation", "cud", (), True)),
    ("system/*.*", ResourceScope("system", "*", "cruds", (), True)),
    ("patient/ResearchSubject.rs", ResourceScope("patient", "ResearchSubject", "rs")),
    ("user/*.cruds", ResourceScope("user", "*", "cruds")),
    ("system/Group.rs", ResourceScope("system", "Group", "rs")),
    ("patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
     ResourceScope("patient", "Observation", "rs",
                   (("category", "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"),))),
    ("patient/Observation.rs?status=final&category=vital-signs",
     ResourceScope("patient", "Observation", "rs", (("category", "vital-signs"), ("status", "final")))),
])
def test_resource_scopes(text, expected):
    assert parse_resource_scope(text) == expected


@pytest.mark.parametrize("text", ["patient/*.sr", "patient/*.rr", "patient/*.x", "clinic/*.rs", "patient/Nope.rs",
                                  "patient/*.read?category=x", "patient/*.rs?", "patient/Observation", "*.rs"])
def test_malformed_resource_scopes(text):
    assert parse_resource_scope(text) is None


def test_parse_sorts_kinds_and_round_trips():
    s = parse("openid fhirUser launch/patient patient/*.read made-up user/Observation.rs?code=1234-5")
    assert s.smart == {"openid", "fhirUser", "launch/patient"} and s.unknown == ("made-up",)
    assert str(s) == "launch/patient openid fhirUser patient/*.read user/Observation.rs?code=1234-5"
    assert parse(str(s)).resources == s.resources


def test_grant_is_the_intersection():
    allowed = parse("launch openid patient/*.rs user/Observation.cruds system/*.rs")
    got = grant(parse("launch/patient openid patient/*.cruds user/*.rs system/Group.rs user/Patient.rs"), allowed,
                contexts=("patient", "user"))
    assert str(got) == "openid patient/*.rs user/Observation.rs"
    granular = grant(parse("user/Observation.rs"), parse("user/Observation.rs?category=laboratory"))
    assert str(granular) == "user/Observation.rs?category=laboratory"
    v1 = grant(parse("patient/*.read"), parse("patient/*.cruds"))
    assert str(v1) == "patient/*.read"
    assert str(grant(parse("system/*.rs"), parse("system/Group.rs system/Patient.r"))) == "system/Group.rs system/Patient.r"


def test_covers_refuses_escalation():
    granted = parse("offline_access patient/*.rs user/Observation.rs?category=laboratory")
    assert covers(granted, parse("patient/Observation.rs"))
    assert covers(granted, parse("user/Observation.r?category=laboratory"))
    assert not covers(granted, parse("patient/*.cruds"))
    assert not covers(granted, parse("user/Observation.rs"))
    assert not covers(granted, parse("openid"))
    assert not covers(granted, parse("user/*.rs"))


def test_pkce():
    verifier = "dBjftJeZ4CVP-mJ92K27uhbUJU1p1r_wW1gFWFOEjXk"
    # BASE64URL(SHA256(ASCII(verifier))) without padding, computed independently
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    assert pkce.s256(verifier) == challenge and len(challenge) == 43
    assert pkce.verify(verifier, challenge)
    assert not pkce.verify(verifier[:-1] + "Y", challenge)
    assert not pkce.verify("short", pkce.s256("short"))
    assert pkce.check_challenge(challenge, "S256") == challenge
    for value, method in ((verifier, "plain"), (None, None), (challenge, None), ("short", "S256")):
        with pytest.raises(OAuthError):
            pkce.check_challenge(value, method)


# -- what a grant's scopes let through on a type (interactions/access.py) ----------------------------

def _grant(scope: str, patient: str | None = None, fhir_user: str | None = None):
    from fhir_ctms.auth.tokens import AccessGrant
    return AccessGrant("jti", "app", "alice", parse(scope), scope, 0, 0, patient=patient, fhir_user=fhir_user)


def test_several_scopes_on_one_type_are_or_ed():
    from fhir_ctms.errors import Forbidden
    from fhir_ctms.interactions.access import Filter, Guard

    def filters(scope: str, letter: str = "r", rtype: str = "Observation", patient: str | None = "p1"):
        return Guard(_grant(scope, patient), letter).filters(rtype)

    assert filters("user/Observation.rs?category=a user/Observation.rs?category=b") == (
        Filter((("category", "a"),)), Filter((("category", "b"),)))
    # one implied by another adds nothing; one without a condition wins
    assert filters("user/Observation.rs?category=a user/Observation.rs?status=final&category=a") == (
        Filter((("category", "a"),)),)
    assert filters("user/Observation.rs?category=a user/*.rs") is None
    # patient/: the compartment, AND-ed with the scope's parameters; each scope a condition of its own
    assert filters("patient/Observation.rs?category=a user/Observation.rs?category=b") == (
        Filter((("category", "a"),), ("Patient", "p1")), Filter((("category", "b"),)))
    with pytest.raises(Forbidden):
        filters("patient/Observation.rs", patient=None)  # no launch patient: nothing granted
    with pytest.raises(Forbidden):
        filters("user/Observation.rs?category=a", letter="u")
    # only the scopes with the letter count
    assert filters("user/Observation.s?category=a user/Observation.r?category=b") == (Filter((("category", "b"),)),)


def test_the_token_s_own_user():
    from fhir_ctms.interactions.access import own_user
    base = "http://testserver/fhir"
    me = f"{base}/Practitioner/prac-1"
    assert own_user(_grant("openid fhirUser", fhir_user=me), base) == ("Practitioner", "prac-1")
    assert own_user(_grant("openid fhirUser", fhir_user="Practitioner/prac-1"), base) == ("Practitioner", "prac-1")
    assert own_user(_grant("fhirUser", fhir_user=me), base) is None
    assert own_user(_grant("openid fhirUser"), base) is None
    assert own_user(_grant("openid fhirUser", fhir_user="https://other/fhir/Practitioner/prac-1"), base) is None
    assert own_user(_grant("openid fhirUser", fhir_user=f"{base}/Nope/1"), base) is None
