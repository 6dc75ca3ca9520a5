"""``ResearchStudy/[id]/$payments`` and ``Invoice/[id]/$payment-file`` through the HTTP API, on
every database.

The study built here (``pay-study``) has two sites in two countries and currencies:

- ``site-gb`` (GB, paid in GBP; directly under the study): activated 2026-01-10; runs protocol
  1.0 from 2026-01-01 and 2.0 (the amendment) from 2026-04-01.
- ``site-fr`` (FR, paid in EUR; under the country ``pay-fr``): activated 2026-01-20, closed
  2026-06-30; runs protocol 1.0.

The fee schedule (every definition has useContext program = the study):

==============  =================================  ==========  ===========  ========  =====
definition      event                              scope       amount       holdback  other
==============  =================================  ==========  ===========  ========  =====
fee-v-gb-1      visit-completed w2                 country GB  300.00 GBP   10 %      protocol 1.0
fee-v-gb-2      visit-completed w2                 country GB  350.00 GBP   10 %      protocol 2.0
fee-rand-gb     subject-milestone randomised       country GB  1000.00 GBP  10 %
fee-sf-gb       screen-failure                     country GB  150.00 GBP   none      cap 1 per site
fee-start-gb    site-milestone activated           site-gb     5000.00 GBP  none
fee-v-study     visit-completed w2                 study       333.25 EUR   10 %
fee-close-fr    site-milestone closed              country FR  2000.00 EUR  none
==============  =================================  ==========  ===========  ========  =====

No fee for a French randomisation, nor for site-fr's activation (both reported as no-fee).

Rounding: ROUND_HALF_UP to the minor unit per line. 333.25 x 0.10 = 33.325 -> 33.33 (half-even
would give 33.32), net 333.25 - 33.33 = 299.92.

site-gb, 2026-01-01..2026-04-30 (GBP):
  2026-01-10 start-up                   5000.00 - 0.00   = 5000.00
  2026-02-01 s-gb-7 randomised          1000.00 - 100.00 =  900.00
  2026-02-05 s-gb-6 randomised          no consent (not paid)
  2026-02-10 s-gb-4 screen failure       150.00 - 0.00   =  150.00   (first: within the cap of 1)
  2026-02-15 s-gb-1 randomised          1000.00 - 100.00 =  900.00
  2026-02-15 s-gb-7 w2                  after the withdrawal on 2026-02-10 (not paid)
  2026-02-19 s-gb-6 w2                  no consent (not paid)
  2026-02-20 s-gb-5 screen failure      capped (the second; cap 1)
  2026-03-01 s-gb-1 w2 (protocol 1.0)    300.00 - 30.00  =  270.00
  2026-03-01 s-gb-3 randomised          1000.00 - 100.00 =  900.00
  2026-03-20 s-gb-2 randomised          1000.00 - 100.00 =  900.00
  2026-03-25 s-gb-3 w2                  out of window 2026-03-12..2026-03-18 (not paid)
  2026-04-03 s-gb-2 w2 (protocol 2.0)    350.00 - 35.00  =  315.00
  gross 5000 + 4 x 1000 + 150 + 300 + 350 = 9800.00; holdback 4 x 100 + 30 + 35 = 465.00;
  net 9800.00 - 465.00 = 9335.00. The w2 rate changed in the period (300.00 -> 350.00): reported.

site-fr, 2026-01-01..2026-06-30 (EUR):
  2026-01-20 activated                  no fee (not paid)
  2026-02-02 s-fr-1 randomised          no fee (not paid)
  2026-02-16 s-fr-1 w2                   333.25 - 33.33  =  299.92
  2026-03-02 s-fr-2 randomised          no fee (not paid)
  2026-03-16 s-fr-2 w2                   333.25 - 33.33  =  299.92
  2026-06-30 close-out                  2000.00 - 0.00   = 2000.00
  2026-06-30 holdback release             66.66 - 0.00   =   66.66   (33.33 + 33.33)
  gross 333.25 x 2 + 2000.00 + 66.66 = 2733.16; holdback 66.66; net 2666.50.
"""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from fhir.resources.operationdefinition import OperationDefinition
from fhir.resources.parameters import Parameters

from .fhir import outcome_codes

PROFILES = Path(__file__).resolve().parent.parent / "profiles"
CTMS = "http://fhir-ctms.org/fhir"
P = "http://example.org/fhir/PlanDefinition/pay-protocol"
LEVEL = f"{CTMS}/CodeSystem/study-level"
STATE = "http://terminology.hl7.org/CodeSystem/research-subject-state"
MILESTONE = "http://terminology.hl7.org/CodeSystem/research-subject-milestone"
REASON = f"{CTMS}/CodeSystem/subject-progress-reason"
USAGE = "http://terminology.hl7.org/CodeSystem/usage-context-type"
EVENT_CS = f"{CTMS}/CodeSystem/payable-event"
SID = f"{CTMS}/sid/payable-event"


# -- building the study --------------------------------------------------------------------------

def study(rid: str, level: str, **fields: Any) -> dict[str, Any]:
    return {"resourceType": "ResearchStudy", "id": rid, "status": "active",
            "classifier": [{"coding": [{"system": LEVEL, "code": level}]}], **fields}


def milestones(*pairs: tuple[str, str]) -> list[dict[str, Any]]:
    return [{"state": {"coding": [{"system": f"{CTMS}/CodeSystem/site-milestone", "code": c}]},
             "actual": True, "period": {"start": d}} for c, d in pairs]


def adoption(version: str, effective: str) -> dict[str, Any]:
    return {"url": f"{CTMS}/StructureDefinition/site-protocol", "extension": [
        {"url": "protocol", "valueCanonical": f"{P}|{version}"}, {"url": "effective", "valueDate": effective}]}


def site(rid: str, country: str, parent: str, org: str, ms: list[tuple[str, str]], *adoptions: dict) -> dict:
    return study(rid, "site", title=f"Site {rid}", partOf=[{"reference": f"ResearchStudy/{parent}"}],
                 site=[{"reference": f"Organization/{org}"}],
                 region=[{"coding": [{"system": "urn:iso:std:iso:3166", "code": country}]}],
                 progressStatus=milestones(*ms), extension=list(adoptions))


def subject(rid: str, site_id: str, progress: list[tuple], consent: bool = True) -> dict[str, Any]:
    r: dict[str, Any] = {
        "resourceType": "ResearchSubject", "id": rid, "status": "active",
        "study": {"reference": f"ResearchStudy/{site_id}"}, "subject": {"reference": f"Patient/p-{rid}"},
        "progress": []}
    for state, start, *rest in progress:
        p: dict[str, Any] = {"subjectState": {"coding": [{"system": STATE, "code": state}]}, "startDate": start}
        if state == "on-study":
            p["milestone"] = {"coding": [{"system": MILESTONE, "code": "Randomized"}]}
        if rest:
            p["reason"] = {"coding": [{"system": REASON, "code": rest[0]}]}
        r["progress"].append(p)
    if consent:
        r["consent"] = [{"reference": f"Consent/c-{rid}"}]
    return r


def visit(sid: str, action: str, version: str, low: str, high: str, done: str) -> list[dict[str, Any]]:
    appt = {"resourceType": "Appointment", "id": f"a-{sid}-{action}", "status": "fulfilled",
            "identifier": [{"system": f"{CTMS}/sid/planned-visit", "value": f"{sid}/{action}"}],
            "extension": [{"url": f"{CTMS}/StructureDefinition/protocol-visit",
                           "valueCanonical": f"{P}|{version}#{action}"}],
            "subject": {"reference": f"Patient/p-{sid}"},
            "requestedPeriod": [{"start": low, "end": high}],
            "participant": [{"actor": {"reference": f"Patient/p-{sid}"}, "status": "accepted"}]}
    enc = {"resourceType": "Encounter", "id": f"e-{sid}-{action}", "status": "completed",
           "subject": {"reference": f"Patient/p-{sid}"}, "appointment": [{"reference": f"Appointment/a-{sid}-{action}"}],
           "actualPeriod": {"start": f"{done}T09:00:00Z", "end": f"{done}T10:00:00Z"}}
    return [appt, enc]


def fee(rid: str, kind: str, amount: str, currency: str, detail: str | None = None, holdback: str | None = None,
        country: str | None = None, site_id: str | None = None, protocol: str | None = None,
        cap: int | None = None, start: str = "2026-01-01") -> dict[str, Any]:
    uc = [{"code": {"system": USAGE, "code": "program"}, "valueReference": {"reference": "ResearchStudy/pay-study"}}]
    if country:
        uc.append({"code": {"system": USAGE, "code": "venue"},
                   "valueCodeableConcept": {"coding": [{"system": "urn:iso:std:iso:3166", "code": country}]}})
    if site_id:
        uc.append({"code": {"system": USAGE, "code": "venue"}, "valueReference": {"reference": f"ResearchStudy/{site_id}"}})
    app: dict[str, Any] = {"effectivePeriod": {"start": start}}
    if protocol:
        app["relatedArtifact"] = {"type": "depends-on", "resource": f"{P}|{protocol}"}
    comps: list[dict[str, Any]] = [{"type": "base", "amount": {"value": float(amount), "currency": currency}}]
    if holdback:
        comps.append({"type": "deduction", "code": {"coding": [{"system": EVENT_CS, "code": "holdback"}]},
                      "factor": float(holdback)})
    ext = []
    if detail:
        ext.append({"url": f"{CTMS}/StructureDefinition/payable-event-detail", "valueString": detail})
    if cap is not None:
        ext.append({"url": f"{CTMS}/StructureDefinition/per-site-cap", "valuePositiveInt": cap})
    r = {"resourceType": "ChargeItemDefinition", "id": rid, "url": f"http://example.org/fhir/ChargeItemDefinition/{rid}",
         "version": "1", "status": "active", "useContext": uc,
         "code": {"coding": [{"system": EVENT_CS, "code": kind}]},
         "applicability": [app], "propertyGroup": [{"priceComponent": comps}]}
    if ext:
        r["extension"] = ext
    return r


FEES = [
    fee("fee-v-gb-1", "visit-completed", "300.00", "GBP", "w2", "0.10", country="GB", protocol="1.0"),
    fee("fee-v-gb-2", "visit-completed", "350.00", "GBP", "w2", "0.10", country="GB", protocol="2.0"),
    fee("fee-rand-gb", "subject-milestone", "1000.00", "GBP", "randomised", "0.10", country="GB"),
    fee("fee-sf-gb", "screen-failure", "150.00", "GBP", country="GB", cap=1),
    fee("fee-start-gb", "site-milestone", "5000.00", "GBP", "activated", site_id="site-gb"),
    fee("fee-v-study", "visit-completed", "333.25", "EUR", "w2", "0.10"),
    fee("fee-close-fr", "site-milestone", "2000.00", "EUR", "closed", country="FR"),
]


def resources() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"resourceType": "Organization", "id": "sponsor", "name": "Pay Sponsor plc"},
        {"resourceType": "Organization", "id": "org-gb", "name": "Royal Test Hospital",
         "identifier": [{"system": "https://example.org/vendor", "value": "V-GB-1"}]},
        {"resourceType": "Organization", "id": "org-fr", "name": "Hopital d'Essai",
         "identifier": [{"system": "https://example.org/vendor", "value": "V-FR-1"}]},
        study("pay-study", "study", title="Pay study", associatedParty=[
            {"role": {"coding": [{"system": "http://hl7.org/fhir/research-study-party-role", "code": "sponsor"}]},
             "party": {"reference": "Organization/sponsor"}}]),
        study("pay-fr", "country", partOf=[{"reference": "ResearchStudy/pay-study"}]),
        site("site-gb", "GB", "pay-study", "org-gb", [("activated", "2026-01-10")],
             adoption("1.0", "2026-01-01"), adoption("2.0", "2026-04-01")),
        site("site-fr", "FR", "pay-fr", "org-fr", [("activated", "2026-01-20"), ("closed", "2026-06-30")],
             adoption("1.0", "2026-01-01")),
        study("other-site", "site", partOf=[{"reference": "ResearchStudy/other-study"}]),
        *FEES,
    ]
    subs = [
        subject("s-gb-1", "site-gb", [("screening", "2026-02-01"), ("on-study", "2026-02-15")]),
        subject("s-gb-2", "site-gb", [("screening", "2026-03-06"), ("on-study", "2026-03-20")]),
        subject("s-gb-3", "site-gb", [("screening", "2026-02-15"), ("on-study", "2026-03-01")]),
        subject("s-gb-4", "site-gb", [("screening", "2026-02-01"), ("ineligible", "2026-02-10", "screen-failure")]),
        subject("s-gb-5", "site-gb", [("screening", "2026-02-05"), ("ineligible", "2026-02-20", "screen-failure")]),
        subject("s-gb-6", "site-gb", [("screening", "2026-01-22"), ("on-study", "2026-02-05")], consent=False),
        subject("s-gb-7", "site-gb", [("screening", "2026-01-18"), ("on-study", "2026-02-01"),
                                      ("withdrawn", "2026-02-10", "withdrawn-by-subject")]),
        subject("s-fr-1", "site-fr", [("screening", "2026-01-19"), ("on-study", "2026-02-02")]),
        subject("s-fr-2", "site-fr", [("screening", "2026-02-16"), ("on-study", "2026-03-02")]),
    ]
    for s in subs:
        out.append({"resourceType": "Patient", "id": f"p-{s['id']}"})
        if s.get("consent"):
            out.append({"resourceType": "Consent", "id": f"c-{s['id']}", "status": "active",
                        "subject": {"reference": f"Patient/p-{s['id']}"}})
        out.append(s)
    out += visit("s-gb-1", "w2", "1.0", "2026-02-26", "2026-03-04", "2026-03-01")
    out += visit("s-gb-2", "w2", "2.0", "2026-04-01", "2026-04-07", "2026-04-03")
    out += visit("s-gb-3", "w2", "1.0", "2026-03-12", "2026-03-18", "2026-03-25")  # out of window
    out += visit("s-gb-6", "w2", "1.0", "2026-02-16", "2026-02-22", "2026-02-19")  # no consent
    out += visit("s-gb-7", "w2", "1.0", "2026-02-12", "2026-02-18", "2026-02-15")  # after withdrawal
    out += visit("s-fr-1", "w2", "1.0", "2026-02-13", "2026-02-19", "2026-02-16")
    out += visit("s-fr-2", "w2", "1.0", "2026-03-13", "2026-03-19", "2026-03-16")
    return out


async def build(client) -> None:
    for r in resources():
        resp = await client.put(f"/{r['resourceType']}/{r['id']}", json=r)
        assert resp.status_code in (200, 201), resp.text


# -- reading the answer --------------------------------------------------------------------------

def _value(p: dict[str, Any]) -> Any:
    v = next((v for k, v in p.items() if k.startswith("value")), None)
    if isinstance(v, dict) and "currency" in v:
        return (Decimal(str(v["value"])).quantize(Decimal("0.01")), v["currency"])
    if isinstance(v, dict) and "reference" in v:
        return v["reference"]
    return v


def _parts(parts: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in parts:
        out.setdefault(p["name"], []).append(_value(p) if "part" not in p else _parts(p["part"]))
    return {k: v[0] if len(v) == 1 and k not in ("event", "discrepancy", "definition") else v for k, v in out.items()}


def sites_of(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    Parameters.model_validate(body)
    return {s["site"]: s for s in (_parts(p["part"]) for p in body["parameter"] if p["name"] == "site")}


def events(site_part: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["key"]: e for e in site_part.get("event", [])}


def gbp(v: str) -> tuple[Decimal, str]:
    return (Decimal(v), "GBP")


def eur(v: str) -> tuple[Decimal, str]:
    return (Decimal(v), "EUR")


async def payments(client, expect: int = 200, method: str = "GET", **params: Any) -> dict[str, Any]:
    if method == "GET":
        resp = await client.get("/ResearchStudy/pay-study/$payments", params=params)
    else:
        body = {"resourceType": "Parameters", "parameter": [
            {"name": k, ("valueBoolean" if isinstance(v, bool) else "valueString" if k == "site" else "valueDate"): v}
            for k, v in params.items()]}
        resp = await client.post("/ResearchStudy/pay-study/$payments", json=body)
    assert resp.status_code == expect, resp.text
    return resp.json()


# -- tests ---------------------------------------------------------------------------------------

def test_operation_definitions_are_valid():
    for name in ("OperationDefinition-ResearchStudy-payments.json", "OperationDefinition-Invoice-payment-file.json"):
        d = json.loads((PROFILES / name).read_text())
        OperationDefinition.model_validate(d)
    d = json.loads((PROFILES / "OperationDefinition-ResearchStudy-payments.json").read_text())
    assert d["url"] == f"{CTMS}/OperationDefinition/ResearchStudy-payments" and d["affectsState"] is True


async def test_report_every_figure(client):
    await build(client)
    out = sites_of(await payments(client, start="2026-01-01", end="2026-04-30"))
    assert set(out) == {"ResearchStudy/site-gb", "ResearchStudy/site-fr"}
    gb = out["ResearchStudy/site-gb"]
    assert gb["currency"] == "GBP" and gb["payee"] == "Organization/org-gb"
    ev = events(gb)
    assert len(ev) == 13
    # paid, with the definition each rate comes from
    paid = {k: (e["definition"][0], e["rate"], e["gross"], e["holdback"], e["net"], e["due"])
            for k, e in ev.items() if e["status"] == "payable"}
    U = "http://example.org/fhir/ChargeItemDefinition/"
    assert paid == {
        "site-milestone/site-gb/activated": (f"{U}fee-start-gb|1", gbp("5000"), gbp("5000"), gbp("0"), gbp("5000"), gbp("5000")),
        "subject-milestone/s-gb-7/randomised": (f"{U}fee-rand-gb|1", gbp("1000"), gbp("1000"), gbp("100"), gbp("900"), gbp("900")),
        "screen-failure/s-gb-4": (f"{U}fee-sf-gb|1", gbp("150"), gbp("150"), gbp("0"), gbp("150"), gbp("150")),
        "subject-milestone/s-gb-1/randomised": (f"{U}fee-rand-gb|1", gbp("1000"), gbp("1000"), gbp("100"), gbp("900"), gbp("900")),
        "visit/s-gb-1/w2": (f"{U}fee-v-gb-1|1", gbp("300"), gbp("300"), gbp("30"), gbp("270"), gbp("270")),
        "subject-milestone/s-gb-3/randomised": (f"{U}fee-rand-gb|1", gbp("1000"), gbp("1000"), gbp("100"), gbp("900"), gbp("900")),
        "subject-milestone/s-gb-2/randomised": (f"{U}fee-rand-gb|1", gbp("1000"), gbp("1000"), gbp("100"), gbp("900"), gbp("900")),
        # after the amendment (protocol 2.0): the new rate
        "visit/s-gb-2/w2": (f"{U}fee-v-gb-2|1", gbp("350"), gbp("350"), gbp("35"), gbp("315"), gbp("315")),
    }
    # reported, not paid
    issues = {k: e.get("issue") for k, e in ev.items() if e["status"] != "payable"}
    assert issues == {"subject-milestone/s-gb-6/randomised": "no-consent", "visit/s-gb-6/w2": "no-consent",
                      "visit/s-gb-7/w2": "after-withdrawal", "screen-failure/s-gb-5": "capped",
                      "visit/s-gb-3/w2": "out-of-window"}
    assert ev["screen-failure/s-gb-5"]["status"] == "capped" and ev["visit/s-gb-3/w2"]["net"] == gbp("0")
    assert (gb["gross"], gb["holdback"], gb["net"], gb["invoiced"], gb["due"]) == \
        (gbp("9800"), gbp("465"), gbp("9335"), gbp("0"), gbp("9335"))
    codes = sorted(d["code"] for d in gb["discrepancy"])
    assert codes == ["after-withdrawal", "capped", "no-consent", "no-consent", "out-of-window", "rate-changed"]
    rc = next(d for d in gb["discrepancy"] if d["code"] == "rate-changed")
    assert rc["definition"] == [f"{U}fee-v-gb-1|1", f"{U}fee-v-gb-2|1"]

    fr = sites_of(await payments(client, start="2026-01-01", end="2026-06-30"))["ResearchStudy/site-fr"]
    ev = events(fr)
    assert fr["currency"] == "EUR"
    assert {k: (e["status"], e["gross"], e["holdback"], e["net"]) for k, e in ev.items() if e["status"] != "not-paid"} == {
        "visit/s-fr-1/w2": ("payable", eur("333.25"), eur("33.33"), eur("299.92")),  # 33.325 half up
        "visit/s-fr-2/w2": ("payable", eur("333.25"), eur("33.33"), eur("299.92")),
        "site-milestone/site-fr/closed": ("payable", eur("2000"), eur("0"), eur("2000")),
        "holdback-release/site-fr": ("release", eur("66.66"), eur("0"), eur("66.66")),
    }
    assert {k for k, e in ev.items() if e.get("issue") == "no-fee"} == {
        "site-milestone/site-fr/activated", "subject-milestone/s-fr-1/randomised", "subject-milestone/s-fr-2/randomised"}
    assert (fr["gross"], fr["holdback"], fr["net"], fr["due"]) == (eur("2733.16"), eur("66.66"), eur("2666.5"), eur("2666.5"))
    assert not [d for d in fr["discrepancy"] if d["code"] == "rate-changed"]


async def test_period_and_site_filters(client):
    await build(client)
    # March only, site-gb only: s-gb-1 w2 300, s-gb-3 randomised 1000, s-gb-2 randomised 1000
    body = await payments(client, site="ResearchStudy/site-gb", start="2026-03-01", end="2026-03-31")
    out = sites_of(body)
    assert list(out) == ["ResearchStudy/site-gb"]
    gb = out["ResearchStudy/site-gb"]
    assert sorted(k for k, e in events(gb).items() if e["status"] == "payable") == [
        "subject-milestone/s-gb-2/randomised", "subject-milestone/s-gb-3/randomised", "visit/s-gb-1/w2"]
    # 300 + 1000 + 1000 = 2300; holdback 30 + 100 + 100 = 230; net 2070
    assert (gb["gross"], gb["holdback"], gb["net"]) == (gbp("2300"), gbp("230"), gbp("2070"))
    # site-gb ran protocol 1.0 all March: only the 1.0 w2 rate applied, no rate change
    assert "rate-changed" not in [d["code"] for d in gb["discrepancy"]]
    # 2026-03-15..2026-04-15 spans its adoption of 2.0 on 2026-04-01: the w2 rate changed
    gb = sites_of(await payments(client, site="site-gb", start="2026-03-15", end="2026-04-15"))["ResearchStudy/site-gb"]
    assert [d["code"] for d in gb["discrepancy"]].count("rate-changed") == 1


async def test_errors(client):
    await build(client)
    r = await client.get("/ResearchStudy/nope/$payments")
    assert r.status_code == 404 and outcome_codes(r) == ["not-found"]
    for bad in ({"start": "2026-13-01"}, {"end": "2026-1-1"}, {"start": "2026-05-01", "end": "2026-04-01"},
                {"bogus": "1"}, {"persist": "maybe"}):
        r = await client.post("/ResearchStudy/pay-study/$payments", params=bad)
        assert r.status_code == 400, (bad, r.text)
    r = await client.get("/ResearchStudy/pay-study/$payments", params={"site": "other-site"})
    assert r.status_code == 422 and "not a site of" in r.text
    r = await client.get("/ResearchStudy/pay-study/$payments", params={"persist": "true"})
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    # nothing was written by any of these
    assert (await client.get("/ChargeItem")).json().get("total", 0) == 0
    assert (await client.get("/Invoice")).json().get("total", 0) == 0
    # a deleted study is gone, not unknown (R5 http.html#delete: 410 for a deleted resource)
    assert (await client.delete("/ResearchStudy/pay-study")).status_code in (200, 204)
    r = await client.get("/ResearchStudy/pay-study/$payments")
    assert r.status_code == 410 and outcome_codes(r) == ["deleted"], r.text
    r = await client.get("/Invoice/nope/$payment-file")
    assert r.status_code == 404


async def _provenance(client, ref: str) -> int:
    r = await client.get("/Provenance", params={"target": ref})
    assert r.status_code == 200
    return len(r.json().get("entry", []))


async def test_persist_is_idempotent_and_audited(client):
    await build(client)
    # site-gb to 2026-03-15: start-up 5000, s-gb-7 1000, s-gb-4 150, s-gb-1 1000, s-gb-1 w2 300,
    # s-gb-3 1000: gross 8450, holdback 100 x 3 + 30 = 330, net 8120; 6 ChargeItems
    out = await payments(client, method="POST", site="site-gb", start="2026-01-01", end="2026-03-15", persist=True)
    params = {p["name"]: p for p in out["parameter"]}
    assert params["chargeItemsCreated"]["valueInteger"] == 6
    gb = sites_of(out)["ResearchStudy/site-gb"]
    inv_ref = gb["invoice"]
    inv = (await client.get(f"/{inv_ref}")).json()
    assert inv["status"] == "draft" and inv["issuer"] == {"reference": "Organization/org-gb"}
    assert inv["recipient"] == {"reference": "Organization/sponsor"}
    assert (inv["totalGross"], inv["totalNet"]) == ({"value": 8450, "currency": "GBP"}, {"value": 8120, "currency": "GBP"})
    assert [pc["amount"]["value"] for pc in inv["totalPriceComponent"]] == [8450, 330]
    assert len(inv["lineItem"]) == 6
    items = (await client.get("/ChargeItem", params={"identifier": f"{SID}|"})).json()["entry"]
    assert len(items) == 6
    for e in items:
        ci = e["resource"]
        assert ci["status"] == "billed" and ci["performingOrganization"] == {"reference": "Organization/org-gb"}
        assert await _provenance(client, f"ChargeItem/{ci['id']}") == 1
    assert await _provenance(client, inv_ref) == 1
    site_level = [e["resource"] for e in items if e["resource"]["identifier"][0]["value"].startswith("site-milestone/")]
    assert site_level[0]["subject"]["reference"].startswith("Group/")
    assert site_level[0]["definitionCanonical"] == ["http://example.org/fhir/ChargeItemDefinition/fee-start-gb|1"]

    # the report now says invoiced, nothing due
    gb = sites_of(await payments(client, site="site-gb", start="2026-01-01", end="2026-03-15"))["ResearchStudy/site-gb"]
    assert (gb["net"], gb["invoiced"], gb["due"]) == (gbp("8120"), gbp("8120"), gbp("0"))
    assert events(gb)["visit/s-gb-1/w2"]["invoice"] == inv_ref

    # again: nothing new, no new invoice
    out = await payments(client, method="POST", site="site-gb", start="2026-01-01", end="2026-03-15", persist=True)
    assert {p["name"]: p for p in out["parameter"]}["chargeItemsCreated"]["valueInteger"] == 0
    assert "invoice" not in sites_of(out)["ResearchStudy/site-gb"]
    assert len((await client.get("/Invoice")).json()["entry"]) == 1

    # the whole period: only the new events (s-gb-2 randomised 1000/100/900 and w2 350/35/315)
    out = await payments(client, method="POST", site="site-gb", start="2026-01-01", end="2026-04-30", persist=True)
    assert {p["name"]: p for p in out["parameter"]}["chargeItemsCreated"]["valueInteger"] == 2
    second = (await client.get("/" + sites_of(out)["ResearchStudy/site-gb"]["invoice"])).json()
    assert second["id"] != inv["id"] and len(second["lineItem"]) == 2
    assert (second["totalGross"]["value"], second["totalNet"]["value"]) == (1350, 1215)  # 1350 - 135
    assert len((await client.get("/ChargeItem")).json()["entry"]) == 8
    gb = sites_of(await payments(client, site="site-gb", start="2026-01-01", end="2026-04-30"))["ResearchStudy/site-gb"]
    assert (gb["net"], gb["invoiced"], gb["due"]) == (gbp("9335"), gbp("9335"), gbp("0"))  # 8120 + 1215
    # the call itself is audited
    audits = (await client.get("/AuditEvent", params={"entity": "ResearchStudy/pay-study"})).json()
    assert len(audits.get("entry", [])) >= 3

    # the first invoice cancelled: its six events are due again (8120.00), and the next run puts
    # their existing ChargeItems on a new invoice without making new ones
    inv = (await client.get(f"/{inv_ref}")).json()
    r = await client.put(f"/{inv_ref}", json={**inv, "status": "cancelled"})
    assert r.status_code == 200, r.text
    gb = sites_of(await payments(client, site="site-gb", start="2026-01-01", end="2026-04-30"))["ResearchStudy/site-gb"]
    assert (gb["invoiced"], gb["due"]) == (gbp("1215"), gbp("8120"))
    out = await payments(client, method="POST", site="site-gb", start="2026-01-01", end="2026-04-30", persist=True)
    assert {p["name"]: p for p in out["parameter"]}["chargeItemsCreated"]["valueInteger"] == 0
    third = (await client.get("/" + sites_of(out)["ResearchStudy/site-gb"]["invoice"])).json()
    assert third["id"] not in (inv["id"], second["id"])
    assert sorted(li["chargeItemReference"]["reference"] for li in third["lineItem"]) == sorted(
        li["chargeItemReference"]["reference"] for li in inv["lineItem"])
    assert third["totalNet"]["value"] == 8120 and len((await client.get("/ChargeItem")).json()["entry"]) == 8


async def test_invoice_issued_balanced_and_payment_file(client):
    await build(client)
    out = await payments(client, method="POST", site="site-fr", start="2026-01-01", end="2026-06-30", persist=True)
    # 2 visits, the close-out fee and the holdback release
    assert {p["name"]: p for p in out["parameter"]}["chargeItemsCreated"]["valueInteger"] == 4
    ref = sites_of(out)["ResearchStudy/site-fr"]["invoice"]
    inv = (await client.get(f"/{ref}")).json()
    assert (inv["totalGross"]["value"], inv["totalNet"]["value"]) == (2733.16, 2666.5)
    r = await client.get(f"/{ref}/$payment-file")
    assert r.status_code == 422  # a draft is not paid
    inv["status"] = "issued"
    r = await client.put(f"/{ref}", json=inv)
    assert r.status_code == 200, r.text

    r = await client.get(f"/{ref}/$payment-file")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 5 and rows[-1]["line"] == "TOTAL"
    assert {row["payee_name"] for row in rows} == {"Hopital d'Essai"}
    assert {row["payee_identifier"] for row in rows} == {"https://example.org/vendor|V-FR-1"}
    assert {(row["site"], row["site_title"], row["currency"], row["invoice"]) for row in rows} == {
        ("ResearchStudy/site-fr", "Site site-fr", "EUR", ref)}
    lines = [(row["event_key"], row["event_date"], row["gross"], row["holdback"], row["net"]) for row in rows[:-1]]
    assert lines == [
        ("visit/s-fr-1/w2", "2026-02-16", "333.25", "33.33", "299.92"),
        ("visit/s-fr-2/w2", "2026-03-16", "333.25", "33.33", "299.92"),
        ("holdback-release/site-fr", "2026-06-30", "66.66", "0.00", "66.66"),
        ("site-milestone/site-fr/closed", "2026-06-30", "2000.00", "0.00", "2000.00"),
    ]
    assert all(row["charge_item"].startswith("ChargeItem/") for row in rows[:-1])
    # the total: 2733.16 gross, 66.66 withheld, 2666.50 to pay
    assert (rows[-1]["gross"], rows[-1]["holdback"], rows[-1]["net"]) == ("2733.16", "66.66", "2666.50")

    async def notice(rid: str, amount: float) -> None:
        r = await client.put(f"/PaymentNotice/{rid}", json={
            "resourceType": "PaymentNotice", "id": rid, "status": "active", "created": "2026-07-15",
            "request": {"reference": ref}, "recipient": {"reference": "Organization/org-fr"},
            "amount": {"value": amount, "currency": "EUR"}})
        assert r.status_code == 201, r.text

    await notice("pn-1", 2000.00)
    out = await payments(client, method="POST", site="site-fr", persist=True)
    assert "balanced" not in {p["name"] for p in out["parameter"]}  # 2000.00 < 2666.50
    assert (await client.get(f"/{ref}")).json()["status"] == "issued"
    await notice("pn-2", 666.50)  # paid in full: balanced at once, by the notice's own write
    now = (await client.get(f"/{ref}")).json()
    assert now["status"] == "balanced" and now["meta"]["versionId"] == "3"
    assert await _provenance(client, ref) == 3  # created, issued, balanced
    # balanced once: a further call changes nothing
    out = await payments(client, method="POST", site="site-fr", persist=True)
    assert "balanced" not in {p["name"] for p in out["parameter"]}
    assert {p["name"]: p for p in out["parameter"]}["chargeItemsCreated"]["valueInteger"] == 0


# -- the example study: the README's payment figures ---------------------------------------------

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FEE_BASE = f"{CTMS}/ChargeItemDefinition/acme-101-"


def readme_payments() -> list[tuple[str, str, str, str, list[list[str]], tuple[str, str, str]]]:
    """(site, start, end, currency, rows, totals) of each payment example of examples/README.md."""
    import re
    text = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    out = []
    for m in re.finditer(r"### `(site-[\w-]+)`, (\d{4}-\d\d-\d\d) to (\d{4}-\d\d-\d\d) \((\w+)\)\n(.*?)Totals: "
                         r"gross \*\*([\d.]+) \w+\*\*, holdback \*\*([\d.]+) \w+\*\*, net \*\*([\d.]+)", text, re.S):
        rows = [[c.strip().strip("`") for c in line.strip().strip("|").split("|")]
                for line in m.group(5).splitlines() if line.startswith("| 20")]
        out.append((m.group(1), m.group(2), m.group(3), m.group(4), rows, (m.group(6), m.group(7), m.group(8))))
    return out


async def test_example_study_payments_match_the_readme(client):
    """The README's figures are computed by examples/build_example.py (its own small calculator
    over its tables); $payments computes them from the stored resources: they must agree."""
    examples = readme_payments()
    assert [(s, a) for s, a, *_ in examples] == [
        ("site-fr-03", "2025-01-01"), ("site-gb-01", "2026-04-01"), ("site-gb-01", "2026-09-01")]
    # the closed site's whole life: its close-out fee and the release of its holdback
    assert {r[1] for r in examples[0][4] if r[2] in ("payable", "release")} >= {
        "site-milestone/site-fr-03/closed", "holdback-release/site-fr-03"}
    # a screen failure beyond the cap and a visit out of its window, reported and not paid
    assert {r[2] for r in examples[2][4]} >= {"capped", "out-of-window"}
    for name in ("acme-101-1-study.json", "acme-101-2-amendment.json"):
        r = await client.post("", content=(EXAMPLES / name).read_bytes(), headers={"Content-Type": "application/fhir+json"})
        assert r.status_code == 200, r.text[:2000]
    for site_id, start, end, currency, rows, totals in examples:
        r = await client.get("/ResearchStudy/acme-101/$payments", params={"site": site_id, "start": start, "end": end})
        assert r.status_code == 200, r.text
        site_part = sites_of(r.json())[f"ResearchStudy/{site_id}"]
        assert site_part["currency"] == currency
        got = []
        for e in site_part.get("event", []):
            status = e["status"] if e["status"] in ("payable", "release", "capped") else e["issue"]
            definition = e["definition"][0] if e["status"] in ("payable", "capped") else "-"
            money = [f"{e[k][0]:.2f}" if e["status"] in ("payable", "release") else "0.00"
                     for k in ("gross", "holdback", "net")]
            got.append([e["date"], e["key"], status, definition, *money])
        want = [[r[0], r[1], r[2], "-" if r[3] == "-" else f"{FEE_BASE}{r[3].removeprefix('fee-')}|1", *r[4:]]
                for r in rows]
        assert got == want, site_id
        assert tuple(f"{site_part[k][0]:.2f}" for k in ("gross", "holdback", "net")) == totals
    # every site once, although a site is part of its study and of its country
    r = await client.get("/ResearchStudy/acme-101/$payments", params={"start": "2025-01-01", "end": "2026-11-23"})
    listed = [p["valueReference"]["reference"] for s in r.json()["parameter"] if s["name"] == "site"
              for p in s["part"] if p["name"] == "site"]
    assert len(listed) == len(set(listed)) == 8, listed
    # the second period at site-gb-01 spans its adoption of 2.0 (2026-07-01): the w8 rate changed
    r = await client.get("/ResearchStudy/acme-101/$payments",
                         params={"site": "site-gb-01", "start": examples[1][1], "end": examples[1][2]})
    changed = [d for d in sites_of(r.json())["ResearchStudy/site-gb-01"]["discrepancy"] if d["code"] == "rate-changed"]
    assert [d["definition"] for d in changed] == [[f"{FEE_BASE}gb-visit-w8-v1|1", f"{FEE_BASE}gb-visit-w8-v2|1"]]
    # the week 12 CT scans are paid as procedures (fee-gb-ct-scan / fee-eur-ct-scan by their SNOMED CT code)
    assert {r[3] for ex in examples for r in ex[4] if r[1].startswith("procedure/")} == {"fee-eur-ct-scan", "fee-gb-ct-scan"}
    # the closed site's invoice, issued, as a payment file: the payee's vendor number is filled
    out = await client.post("/ResearchStudy/acme-101/$payments", json={"resourceType": "Parameters", "parameter": [
        {"name": "site", "valueString": "site-fr-03"}, {"name": "persist", "valueBoolean": True}]})
    assert out.status_code == 200, out.text
    ref = sites_of(out.json())["ResearchStudy/site-fr-03"]["invoice"]
    inv = (await client.get(f"/{ref}")).json()
    assert (await client.put(f"/{ref}", json={**inv, "status": "issued"})).status_code == 200
    rows = list(csv.DictReader(io.StringIO((await client.get(f"/{ref}/$payment-file")).text)))
    assert {row["payee_identifier"] for row in rows} == {f"{CTMS}/sid/vendor|V-FR-03"}
    assert rows[-1]["net"] == examples[0][5][2]  # the whole life of the site: the README's net


async def test_concurrent_persists_pay_each_event_once(client):
    import asyncio
    await build(client)
    outs = await asyncio.gather(*[payments(client, method="POST", site="site-gb", start="2026-01-01",
                                           end="2026-03-15", persist=True) for _ in range(2)])
    # the six events of the period (see test_persist_is_idempotent_and_audited): six ChargeItems
    # and one invoice of 8120.00, whichever call made them
    assert sum({p["name"]: p for p in o["parameter"]}["chargeItemsCreated"]["valueInteger"] for o in outs) == 6
    invoices = (await client.get("/Invoice")).json()["entry"]
    assert len(invoices) == 1 and invoices[0]["resource"]["totalNet"]["value"] == 8120
    assert len((await client.get("/ChargeItem")).json()["entry"]) == 6
    # (a call that read after the other's commit had nothing due and names no invoice)
    named = {sites_of(o)["ResearchStudy/site-gb"].get("invoice") for o in outs} - {None}
    assert named == {f"Invoice/{invoices[0]['resource']['id']}"}


async def test_consent_dates_status_and_decision(client):
    """An event is covered when, on its date, a Consent of the subject with decision permit is in
    force (active, or inactive with period.end: the withdrawal), from period.start (else date) to
    period.end; a deny in force wins. site-gb, 2026-01-01..2026-04-30, with these consents:

    - s-gb-1: active from 2026-02-20: randomised 02-15 is before consent (no-consent); w2 03-01 paid;
    - s-gb-2: inactive, period 03-06..03-25 (withdrawn): randomised 03-20 paid; w2 04-03 no-consent;
    - s-gb-3: active but decision deny: randomised 03-01 no-consent (w2 too, rather than out-of-window);
    - s-gb-4: active, no period, date 02-01: screen failure 02-10 paid (the first under the cap);
    - s-gb-5: inactive without period.end (never in force): screen failure 02-20 no-consent, so
      it is not counted against the cap either;
    - s-gb-7: a deny dated 02-05 beside its permit: randomised 02-01 paid (the deny not yet in
      force), w2 02-15 no-consent (the deny in force).
    """
    await build(client)

    async def consent(sid: str, status: str, decision: str | None = None, date: str | None = None,
                      period: dict | None = None, cid: str | None = None) -> None:
        c: dict[str, Any] = {"resourceType": "Consent", "id": cid or f"c-{sid}", "status": status,
                             "subject": {"reference": f"Patient/p-{sid}"}}
        for k, v in (("decision", decision), ("date", date), ("period", period)):
            if v is not None:
                c[k] = v
        r = await client.put(f"/Consent/{c['id']}", json=c)
        assert r.status_code in (200, 201), r.text

    await consent("s-gb-1", "active", "permit", period={"start": "2026-02-20"})
    await consent("s-gb-2", "inactive", period={"start": "2026-03-06", "end": "2026-03-25"})
    await consent("s-gb-3", "active", "deny", period={"start": "2026-02-15"})
    await consent("s-gb-4", "active", date="2026-02-01")
    await consent("s-gb-5", "inactive", "permit", period={"start": "2026-02-05"})
    await consent("s-gb-7", "active", "deny", date="2026-02-05", cid="c-s-gb-7-deny")
    s7 = (await client.get("/ResearchSubject/s-gb-7")).json()
    s7["consent"].append({"reference": "Consent/c-s-gb-7-deny"})
    assert (await client.put("/ResearchSubject/s-gb-7", json=s7)).status_code == 200

    gb = sites_of(await payments(client, site="site-gb", start="2026-01-01", end="2026-04-30"))["ResearchStudy/site-gb"]
    ev = events(gb)
    status = {k: (e["status"], e.get("issue")) for k, e in ev.items()}
    assert status == {
        "site-milestone/site-gb/activated": ("payable", None),
        "subject-milestone/s-gb-7/randomised": ("payable", None),
        "subject-milestone/s-gb-6/randomised": ("not-paid", "no-consent"),
        "screen-failure/s-gb-4": ("payable", None),
        "subject-milestone/s-gb-1/randomised": ("not-paid", "no-consent"),
        "visit/s-gb-7/w2": ("not-paid", "no-consent"),  # 02-15: the deny is in force
        "visit/s-gb-6/w2": ("not-paid", "no-consent"),
        "screen-failure/s-gb-5": ("not-paid", "no-consent"),
        "visit/s-gb-1/w2": ("payable", None),
        "subject-milestone/s-gb-3/randomised": ("not-paid", "no-consent"),
        "subject-milestone/s-gb-2/randomised": ("payable", None),
        "visit/s-gb-3/w2": ("not-paid", "no-consent"),
        "visit/s-gb-2/w2": ("not-paid", "no-consent"),
    }
    notes = {d["key"]: d["note"] for d in gb["discrepancy"] if d.get("key")}
    assert "2026-02-20" in notes["subject-milestone/s-gb-1/randomised"]   # starts on 02-20
    assert "2026-03-25" in notes["visit/s-gb-2/w2"]                       # ended on 03-25
    assert "deny" in notes["subject-milestone/s-gb-3/randomised"]
    assert "no Consent" in notes["visit/s-gb-6/w2"]
    # paid: start-up 5000, s-gb-7 1000, s-gb-4 150, s-gb-1 w2 300, s-gb-2 1000 = 7450;
    # holdback 100 + 30 + 100 = 230; net 7220
    assert (gb["gross"], gb["holdback"], gb["net"]) == (gbp("7450"), gbp("230"), gbp("7220"))


# -- integrity: concurrent runs, caps and late data, edited invoices, exact money ----------------

async def _live_lines(client) -> dict[str, list[str]]:
    """ChargeItem reference -> the live (not cancelled / entered-in-error) invoices listing it."""
    out: dict[str, list[str]] = {}
    for e in (await client.get("/Invoice", params={"_count": "100"})).json().get("entry", []):
        inv = e["resource"]
        if inv["status"] in ("cancelled", "entered-in-error"):
            continue
        for li in inv["lineItem"]:
            out.setdefault(li["chargeItemReference"]["reference"], []).append(inv["id"])
    return out


async def test_concurrent_persists_with_different_periods_invoice_each_event_once(client):
    import asyncio
    await build(client)
    # one run to 2026-03-15 (six events, 8120.00 net), one with no period (all eight, 9335.00),
    # same site, at the same time: whichever commits second sees the first's ChargeItems and
    # invoice and invoices only the rest
    outs = await asyncio.gather(
        payments(client, method="POST", site="site-gb", start="2026-01-01", end="2026-03-15", persist=True),
        payments(client, method="POST", site="site-gb", persist=True))
    items = (await client.get("/ChargeItem", params={"_count": "100"})).json()["entry"]
    keys = [e["resource"]["identifier"][0]["value"] for e in items]
    assert len(keys) == len(set(keys)) == 8
    assert sum({p["name"]: p for p in o["parameter"]}["chargeItemsCreated"]["valueInteger"] for o in outs) == 8
    live = await _live_lines(client)
    assert sorted(live) == sorted(f"ChargeItem/{e['resource']['id']}" for e in items)
    assert all(len(v) == 1 for v in live.values()), live  # each event on exactly one live invoice
    invoices = [e["resource"] for e in (await client.get("/Invoice")).json()["entry"]]
    assert sum(Decimal(str(i["totalNet"]["value"])) for i in invoices) == Decimal("9335")
    # and the report agrees: everything invoiced once, nothing due
    gb = sites_of(await payments(client, site="site-gb"))["ResearchStudy/site-gb"]
    assert (gb["net"], gb["invoiced"], gb["due"]) == (gbp("9335"), gbp("9335"), gbp("0"))
    assert "invoice-mismatch" not in [d["code"] for d in gb["discrepancy"]]


async def test_cap_keeps_invoiced_events_and_caps_late_earlier_ones(client):
    """The reviewer's scenario: cap 2, both screen failures invoiced, then a screen failure dated
    earlier than both is recorded: the invoiced two keep their payment, the late one is capped,
    and a third is never paid."""
    await build(client)
    cap2 = fee("fee-sf-gb", "screen-failure", "150.00", "GBP", country="GB", cap=2)
    assert (await client.put("/ChargeItemDefinition/fee-sf-gb", json=cap2)).status_code == 200
    gb = sites_of(await payments(client, site="site-gb"))["ResearchStudy/site-gb"]
    assert {k: e["status"] for k, e in events(gb).items() if k.startswith("screen-failure/")} == {
        "screen-failure/s-gb-4": "payable", "screen-failure/s-gb-5": "payable"}
    await payments(client, method="POST", site="site-gb", persist=True)
    # late data: s-gb-8 failed screening on 2026-02-01, before s-gb-4 (02-10) and s-gb-5 (02-20)
    late = subject("s-gb-8", "site-gb", [("screening", "2026-01-20"), ("ineligible", "2026-02-01", "screen-failure")])
    for r in ({"resourceType": "Patient", "id": "p-s-gb-8"},
              {"resourceType": "Consent", "id": "c-s-gb-8", "status": "active",
               "subject": {"reference": "Patient/p-s-gb-8"}}, late):
        assert (await client.put(f"/{r['resourceType']}/{r['id']}", json=r)).status_code == 201
    gb = sites_of(await payments(client, site="site-gb"))["ResearchStudy/site-gb"]
    sf = {k: e for k, e in events(gb).items() if k.startswith("screen-failure/")}
    assert {k: e["status"] for k, e in sf.items()} == {
        "screen-failure/s-gb-8": "capped", "screen-failure/s-gb-4": "payable", "screen-failure/s-gb-5": "payable"}
    assert sf["screen-failure/s-gb-8"]["due"] == gbp("0") and "invoice" not in sf["screen-failure/s-gb-8"]
    assert all(sf[k]["invoice"].startswith("Invoice/") for k in ("screen-failure/s-gb-4", "screen-failure/s-gb-5"))
    assert gb["due"] == gbp("0")
    out = await payments(client, method="POST", site="site-gb", persist=True)
    assert {p["name"]: p for p in out["parameter"]}["chargeItemsCreated"]["valueInteger"] == 0
    assert "invoice" not in sites_of(out)["ResearchStudy/site-gb"]
    sf_items = (await client.get("/ChargeItem", params={"identifier": f"{SID}|screen-failure/s-gb-8"})).json()
    assert sf_items.get("total", len(sf_items.get("entry", []))) == 0
    # without invoices, the cap counts by date: the earliest two are paid
    for e in (await client.get("/Invoice")).json()["entry"]:
        inv = e["resource"]
        assert (await client.put(f"/Invoice/{inv['id']}", json={**inv, "status": "cancelled"})).status_code == 200
    gb = sites_of(await payments(client, site="site-gb"))["ResearchStudy/site-gb"]
    assert {k: e["status"] for k, e in events(gb).items() if k.startswith("screen-failure/")} == {
        "screen-failure/s-gb-8": "payable", "screen-failure/s-gb-4": "payable", "screen-failure/s-gb-5": "capped"}


async def test_payment_file_refuses_an_invoice_that_does_not_add_up(client):
    await build(client)
    out = await payments(client, method="POST", site="site-fr", persist=True)
    ref = sites_of(out)["ResearchStudy/site-fr"]["invoice"]
    inv = (await client.get(f"/{ref}")).json()
    inv["status"] = "issued"
    assert (await client.put(f"/{ref}", json=inv)).status_code == 200
    assert (await client.get(f"/{ref}/$payment-file")).status_code == 200
    good = (await client.get(f"/{ref}")).json()

    # a plain update to balanced with one line raised: the lines no longer sum to totalNet
    bad = json.loads(json.dumps(good))
    bad["status"] = "balanced"
    bad["lineItem"][0]["priceComponent"][0]["amount"]["value"] = 3333.25
    assert (await client.put(f"/{ref}", json=bad)).status_code == 200
    r = await client.get(f"/{ref}/$payment-file")
    assert r.status_code == 422, r.text
    assert "does not add up" in r.text and "totalNet" in r.text and "ChargeItem/" in r.text
    # $payments reports it: the invoiced net of the event differs from its net
    fr = sites_of(await payments(client, site="site-fr"))["ResearchStudy/site-fr"]
    mismatch = [d for d in fr["discrepancy"] if d["code"] == "invoice-mismatch"]
    assert [d.get("key") for d in mismatch] == ["visit/s-fr-1/w2", None]
    assert "3299.92" in mismatch[0]["note"] and "299.92" in mismatch[0]["note"]
    # ... and the invoice itself, which does not add up
    assert mismatch[1]["source"] == ref and "does not add up" in mismatch[1]["note"]
    assert "totalNet is 2666.5" in mismatch[1]["note"]

    # the totals moved with the line (consistent within the invoice): its ChargeItem disagrees
    bad["totalGross"]["value"] = 5733.16
    bad["totalNet"]["value"] = 5666.50
    bad["totalPriceComponent"][0]["amount"]["value"] = 5733.16
    assert (await client.put(f"/{ref}", json=bad)).status_code == 200
    r = await client.get(f"/{ref}/$payment-file")
    assert r.status_code == 422 and "ChargeItem/" in r.text and "lines' nets" not in r.text

    # paid in full by its notices, yet it does not add up: $payments does not set it balanced
    bad["status"] = "issued"
    assert (await client.put(f"/{ref}", json=bad)).status_code == 200
    assert (await client.put("/PaymentNotice/pn-x", json={
        "resourceType": "PaymentNotice", "id": "pn-x", "status": "active", "created": "2026-07-15",
        "request": {"reference": ref}, "recipient": {"reference": "Organization/org-fr"},
        "amount": {"value": 9999.00, "currency": "EUR"}})).status_code == 201
    out = await payments(client, method="POST", site="site-fr", persist=True)
    assert "balanced" not in {p["name"] for p in out["parameter"]}
    assert (await client.get(f"/{ref}")).json()["status"] == "issued"

    # a holdback that is not round(gross x factor)
    bad = json.loads(json.dumps(good))
    bad["lineItem"][0]["priceComponent"][1]["amount"]["value"] = 30.00
    bad["totalNet"]["value"] = 2669.83
    assert (await client.put(f"/{ref}", json=bad)).status_code == 200
    r = await client.get(f"/{ref}/$payment-file")
    assert r.status_code == 422 and "factor" in r.text

    # restored: the file is made again
    assert (await client.put(f"/{ref}", json=good)).status_code == 200
    assert (await client.get(f"/{ref}/$payment-file")).status_code == 200


async def test_money_is_written_as_exact_decimals(client):
    await build(client)
    r = await client.get("/ResearchStudy/pay-study/$payments", params={"site": "site-gb", "start": "2026-01-01",
                                                                      "end": "2026-01-31"})
    assert r.status_code == 200
    # the start-up fee: 5000.00 GBP, not 5000.0
    assert '"valueMoney":{"value":5000.00,"currency":"GBP"}' in r.text.replace(" ", "")
    out = await payments(client, method="POST", site="site-fr", persist=True)
    ref = sites_of(out)["ResearchStudy/site-fr"]["invoice"]
    text = (await client.get(f"/{ref}")).text.replace(" ", "")
    assert '"totalNet":{"value":2666.50,"currency":"EUR"}' in text
    assert '"totalGross":{"value":2733.16,"currency":"EUR"}' in text
    assert '"value":2000.00' in text and '"value":33.33' in text
    assert '"factor":0.1,' in text or '"factor":0.1}' in text  # the definition's factor as written (0.1)


def procedure(pid: str, sid: str, action: str, code: tuple[str, str], status: str = "completed",
              on: str | None = None) -> dict[str, Any]:
    r: dict[str, Any] = {"resourceType": "Procedure", "id": pid, "status": status,
                         "code": {"coding": [{"system": code[0], "code": code[1]}]},
                         "subject": {"reference": f"Patient/p-{sid}"},
                         "encounter": {"reference": f"Encounter/e-{sid}-{action}"}}
    if on:
        r["occurrenceDateTime"] = on
    return r


CT = ("http://snomed.info/sct", "77477000")


async def test_procedure_fees_are_derived_and_paid(client):
    """Completed Procedures done during a study visit are payable events (procedure/<id>),
    matched to a procedure fee whose detail names their code (system|code). On top of build():

    fees: fee-ct-gb (procedure http://snomed.info/sct|77477000, country GB, 412.50 GBP, 10 %),
    fee-proc-all (procedure, no detail: any procedure, study, 90.00 EUR, from 2026-03-01),
    fee-proc-gb (procedure ecg, GB, 80.00 GBP: the detail is no code, reported not-derived).

    site-gb, 2026-01-01..2026-04-30: to test_report_every_figure's events add
      2026-02-15 proc-gb-7 CT at s-gb-7's w2     after the withdrawal on 2026-02-10 (not paid)
      2026-02-19 proc-gb-6 CT at s-gb-6's w2     no consent (not paid)
      2026-03-01 proc-gb-1 CT at s-gb-1's w2      412.50 - 41.25 = 371.25 (412.50 x 0.10 = 41.25)
      2026-04-03 proc-gb-2 LOINC 24627-2 at s-gb-2's w2: only fee-proc-all applies, in EUR:
                 currency (not paid; the site is paid in GBP, its country's fees' currency)
      (proc-gb-1b, in progress, and proc-gb-1c, at no visit: not events)
      gross 9800.00 + 412.50 = 10212.50; holdback 465.00 + 41.25 = 506.25; net 9706.25.
    site-fr, 2026-01-01..2026-06-30: add 2026-03-16 proc-fr-2 CT at s-fr-2's w2: fee-proc-all
      (study), 90.00 EUR, no holdback: gross 2733.16 + 90.00 = 2823.16; holdback 66.66; net 2756.50.
    """
    await build(client)
    for f in (fee("fee-ct-gb", "procedure", "412.50", "GBP", "http://snomed.info/sct|77477000", "0.10", country="GB"),
              fee("fee-proc-all", "procedure", "90.00", "EUR", start="2026-03-01"),
              fee("fee-proc-gb", "procedure", "80.00", "GBP", "ecg", country="GB")):
        r = await client.put(f"/ChargeItemDefinition/{f['id']}", json=f)
        assert r.status_code == 201, r.text
    other = procedure("proc-gb-1c", "s-gb-1", "w2", CT, on="2026-03-02")
    del other["encounter"]
    for p in (procedure("proc-gb-1", "s-gb-1", "w2", CT, on="2026-03-01T11:00:00Z"),
              procedure("proc-gb-1b", "s-gb-1", "w2", CT, status="in-progress", on="2026-03-01"),
              other,
              procedure("proc-gb-2", "s-gb-2", "w2", ("http://loinc.org", "24627-2"), on="2026-04-03"),
              procedure("proc-gb-6", "s-gb-6", "w2", CT, on="2026-02-19"),
              procedure("proc-gb-7", "s-gb-7", "w2", CT),  # undated: the visit's date
              procedure("proc-fr-2", "s-fr-2", "w2", CT, on="2026-03-16")):
        r = await client.put(f"/Procedure/{p['id']}", json=p)
        assert r.status_code == 201, r.text
    U = "http://example.org/fhir/ChargeItemDefinition/"

    gb = sites_of(await payments(client, start="2026-01-01", end="2026-04-30"))["ResearchStudy/site-gb"]
    ev = events(gb)
    procs = {k: (e["date"], e["status"], e.get("issue")) for k, e in ev.items() if k.startswith("procedure/")}
    assert procs == {"procedure/proc-gb-1": ("2026-03-01", "payable", None),
                     "procedure/proc-gb-2": ("2026-04-03", "not-paid", "currency"),
                     "procedure/proc-gb-6": ("2026-02-19", "not-paid", "no-consent"),
                     "procedure/proc-gb-7": ("2026-02-15", "not-paid", "after-withdrawal")}
    ct = ev["procedure/proc-gb-1"]
    assert (ct["detail"], ct["source"], ct["subject"], ct["definition"], ct["rate"]) == (
        "http://snomed.info/sct|77477000", "Procedure/proc-gb-1", "ResearchSubject/s-gb-1", [f"{U}fee-ct-gb|1"],
        gbp("412.50"))
    assert (ct["gross"], ct["holdback"], ct["net"]) == (gbp("412.50"), gbp("41.25"), gbp("371.25"))
    assert ev["procedure/proc-gb-2"]["definition"] == [f"{U}fee-proc-all|1"]
    assert (gb["gross"], gb["holdback"], gb["net"], gb["due"]) == \
        (gbp("10212.50"), gbp("506.25"), gbp("9706.25"), gbp("9706.25"))
    assert [d["definition"] for d in gb["discrepancy"] if d["code"] == "not-derived"] == [[f"{U}fee-proc-gb|1"]]
    note = next(d["note"] for d in gb["discrepancy"] if d["code"] == "not-derived")
    assert "procedure ecg" in note and "80.00 GBP" in note

    fr = sites_of(await payments(client, site="site-fr", start="2026-01-01", end="2026-06-30"))["ResearchStudy/site-fr"]
    pr = events(fr)["procedure/proc-fr-2"]
    assert (pr["status"], pr["definition"], pr["gross"], pr["holdback"], pr["net"]) == (
        "payable", [f"{U}fee-proc-all|1"], eur("90"), eur("0"), eur("90"))
    assert (fr["gross"], fr["holdback"], fr["net"]) == (eur("2823.16"), eur("66.66"), eur("2756.5"))
    assert not [d for d in fr["discrepancy"] if d["code"] == "not-derived"]

    # persisted: the procedure's ChargeItem names its visit and the Procedure; run twice, charged once
    out = await payments(client, method="POST", site="site-fr", persist=True)
    assert {p["name"]: p for p in out["parameter"]}["chargeItemsCreated"]["valueInteger"] == 5
    (item,) = (await client.get("/ChargeItem", params={"identifier": f"{SID}|procedure/proc-fr-2"})).json()["entry"]
    ci = item["resource"]
    assert ci["subject"] == {"reference": "Patient/p-s-fr-2"} and ci["encounter"] == {"reference": "Encounter/e-s-fr-2-w2"}
    assert ci["supportingInformation"] == [{"reference": "Procedure/proc-fr-2"}, {"reference": "ResearchSubject/s-fr-2"}]
    assert ci["definitionCanonical"] == [f"{U}fee-proc-all|1"] and ci["totalPriceComponent"]["amount"]["value"] == 90
    assert await _provenance(client, f"ChargeItem/{ci['id']}") == 1
    out = await payments(client, method="POST", site="site-fr", persist=True)
    assert {p["name"]: p for p in out["parameter"]}["chargeItemsCreated"]["valueInteger"] == 0


async def test_void_charge_items_and_emptied_invoices(client):
    await build(client)
    out = await payments(client, method="POST", site="site-fr", persist=True)
    ref = sites_of(out)["ResearchStudy/site-fr"]["invoice"]
    inv = (await client.get(f"/{ref}")).json()
    # the invoice emptied by an edit: its four events are due again, and this run's invoice
    # would have its identifier: refused (409), nothing written
    assert (await client.put(f"/{ref}", json={**inv, "lineItem": []})).status_code == 200
    r = await client.post("/ResearchStudy/pay-study/$payments", json={"resourceType": "Parameters", "parameter": [
        {"name": "site", "valueString": "site-fr"}, {"name": "persist", "valueBoolean": True}]})
    assert r.status_code == 409 and "does not list its events" in r.text, r.text
    assert len((await client.get("/Invoice")).json()["entry"]) == 1
    # cancelled instead, and one ChargeItem entered in error: that event gets a new ChargeItem,
    # the other three their existing ones, on a new invoice; the void one is on no live invoice
    assert (await client.put(f"/{ref}", json={**inv, "status": "cancelled"})).status_code == 200
    found = await client.get("/ChargeItem", params={"identifier": f"{SID}|visit/s-fr-1/w2"})
    void = found.json()["entry"][0]["resource"]
    r = await client.put(f"/ChargeItem/{void['id']}", json={**void, "status": "entered-in-error"})
    assert r.status_code == 200
    out = await payments(client, method="POST", site="site-fr", persist=True)
    assert {p["name"]: p for p in out["parameter"]}["chargeItemsCreated"]["valueInteger"] == 1
    new = (await client.get("/" + sites_of(out)["ResearchStudy/site-fr"]["invoice"])).json()
    listed = {li["chargeItemReference"]["reference"] for li in new["lineItem"]}
    assert len(listed) == 4 and f"ChargeItem/{void['id']}" not in listed
    assert listed - {li["chargeItemReference"]["reference"] for li in inv["lineItem"]} != set()
    assert new["totalNet"]["value"] == 2666.5
    live = await _live_lines(client)
    assert all(len(v) == 1 for v in live.values()) and f"ChargeItem/{void['id']}" not in live


# -- payment confirmation, holdback release, the operation's Provenance ---------------------------

async def _issued_fr_invoice(client) -> tuple[str, dict[str, Any]]:
    """site-fr's whole life invoiced (2733.16 gross, 2666.50 net, EUR) and issued."""
    out = await payments(client, method="POST", site="site-fr", start="2026-01-01", end="2026-06-30", persist=True)
    ref = sites_of(out)["ResearchStudy/site-fr"]["invoice"]
    inv = (await client.get(f"/{ref}")).json()
    r = await client.put(f"/{ref}", json={**inv, "status": "issued"})
    assert r.status_code == 200, r.text
    return ref, r.json()


def _notice(rid: str | None, ref: str, amount: float, currency: str = "EUR") -> dict[str, Any]:
    return {"resourceType": "PaymentNotice", **({"id": rid} if rid else {}), "status": "active",
            "created": "2026-07-15", "request": {"reference": ref}, "recipient": {"reference": "Organization/org-fr"},
            "amount": {"value": amount, "currency": currency}}


async def _provenances(client, ref: str) -> dict[str, dict[str, Any]]:
    """The Provenances of ``ref`` by the version they target."""
    r = await client.get("/Provenance", params={"target": ref})
    assert r.status_code == 200
    return {e["resource"]["target"][0]["reference"].rpartition("/")[2]: e["resource"] for e in r.json().get("entry", [])}


async def test_payment_notice_balances_its_invoice_at_once(client):
    await build(client)
    ref, inv = await _issued_fr_invoice(client)
    assert inv["meta"]["versionId"] == "2"
    # 2000.00 of 2666.50: still issued, no new version
    r = await client.post("/PaymentNotice", json=_notice(None, ref, 2000.00))
    assert r.status_code == 201, r.text
    assert (await client.get(f"/{ref}")).json()["meta"]["versionId"] == "2"
    # a notice in another currency is refused (422), not silently left out; nothing is written
    r = await client.put("/PaymentNotice/pn-usd", json=_notice("pn-usd", ref, 666.50, "USD"))
    assert r.status_code == 422 and "processing" in outcome_codes(r), r.text
    assert "USD" in r.text and "EUR" in r.text
    assert (await client.get("/PaymentNotice/pn-usd")).status_code == 404
    # a cancelled notice pays nothing and is not checked
    r = await client.put("/PaymentNotice/pn-void", json={**_notice("pn-void", ref, 666.50, "USD"), "status": "cancelled"})
    assert r.status_code == 201, r.text
    assert (await client.get(f"/{ref}")).json()["status"] == "issued"
    # the rest (666.50, a 2000.00 + 666.50 = 2666.50 total): balanced by this write, at once
    r = await client.put("/PaymentNotice/pn-rest", json=_notice("pn-rest", ref, 666.50))
    assert r.status_code == 201, r.text
    now = (await client.get(f"/{ref}")).json()
    assert now["status"] == "balanced" and now["meta"]["versionId"] == "3"
    assert {k: v for k, v in now.items() if k not in ("meta", "status")} == \
        {k: v for k, v in inv.items() if k not in ("meta", "status")}
    history = (await client.get(f"/{ref}/_history")).json()
    assert [(e["resource"]["meta"]["versionId"], e["resource"]["status"]) for e in history["entry"]] == [
        ("3", "balanced"), ("2", "issued"), ("1", "draft")]
    prov = await _provenances(client, ref)
    assert set(prov) == {"1", "2", "3"}
    assert prov["3"]["authorization"][0]["concept"]["text"] == "paid in full: PaymentNotice/pn-rest"
    assert prov["3"]["activity"]["coding"][-1]["code"] == "UPDATE"
    # nothing left for $payments to balance; a further notice changes nothing
    out = await payments(client, method="POST", site="site-fr", persist=True)
    assert "balanced" not in {p["name"] for p in out["parameter"]}
    assert (await client.post("/PaymentNotice", json=_notice(None, ref, 10.00))).status_code == 201
    assert (await client.get(f"/{ref}")).json()["meta"]["versionId"] == "3"


async def test_payment_notice_of_a_draft_or_mismatched_invoice(client):
    await build(client)
    out = await payments(client, method="POST", site="site-fr", persist=True)
    ref = sites_of(out)["ResearchStudy/site-fr"]["invoice"]
    # a draft is not paid: a notice for all of it leaves it a draft
    r = await client.post("/PaymentNotice", json=_notice(None, ref, 2666.50))
    assert r.status_code == 201, r.text
    now = (await client.get(f"/{ref}")).json()
    assert (now["status"], now["meta"]["versionId"]) == ("draft", "1")
    # issued later: paid in full already, but only a notice's write (or $payments) balances it
    r = await client.put(f"/{ref}", json={**now, "status": "issued"})
    assert r.status_code == 200 and r.json()["status"] == "issued"
    out = await payments(client, method="POST", site="site-fr", persist=True)
    assert [p["valueReference"]["reference"] for p in out["parameter"] if p["name"] == "balanced"] == [ref]
    # an issued invoice that does not add up is never balanced by a notice either
    await client.put("/Invoice/odd", json={**{k: v for k, v in now.items() if k not in ("id", "meta")}, "id": "odd",
                                           "status": "issued", "totalNet": {"value": 10.00, "currency": "EUR"},
                                           "identifier": [{"system": f"{CTMS}/sid/site-invoice", "value": "site-fr/odd"}]})
    r = await client.post("/PaymentNotice", json=_notice(None, "Invoice/odd", 10.00))
    assert r.status_code == 201, r.text
    assert (await client.get("/Invoice/odd")).json()["status"] == "issued"
    # a notice whose request is no stored Invoice is an ordinary write
    assert (await client.post("/PaymentNotice", json=_notice(None, "Invoice/none", 1.00))).status_code == 201


async def test_payment_notice_in_a_transaction(client):
    await build(client)
    ref, inv = await _issued_fr_invoice(client)

    def tx(*entries: dict[str, Any]) -> dict[str, Any]:
        return {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": f"urn:uuid:0000000{n}-0000-4000-8000-000000000000", "resource": e,
             "request": {"method": "POST", "url": e["resourceType"]}} for n, e in enumerate(entries)]}

    # one entry in another currency: the whole transaction fails (422), nothing written
    r = await client.post("", json=tx({"resourceType": "Organization", "name": "Tx Payer"},
                                      _notice(None, ref, 2000.00), _notice(None, ref, 666.50, "GBP")))
    assert r.status_code == 422, r.text
    assert (await client.get("/Organization", params={"name": "Tx Payer"})).json().get("entry", []) == []
    assert (await client.get("/PaymentNotice")).json().get("entry", []) == []
    # in a batch only that entry fails (its own transaction: the refused notice is not stored)
    r = await client.post("", json={**tx(_notice(None, ref, 1.00, "GBP"), {"resourceType": "Organization",
                                                                          "name": "Batch Payer"}), "type": "batch"})
    assert r.status_code == 200, r.text
    assert [e["response"]["status"][:3] for e in r.json()["entry"]] == ["422", "201"]
    assert (await client.get("/PaymentNotice")).json().get("entry", []) == []
    # two notices paying it in full together: balanced inside the transaction, once
    r = await client.post("", json=tx(_notice(None, ref, 2000.00), _notice(None, ref, 666.50)))
    assert r.status_code == 200, r.text
    now = (await client.get(f"/{ref}")).json()
    assert (now["status"], now["meta"]["versionId"]) == ("balanced", "3")
    prov = await _provenances(client, ref)
    assert prov["3"]["authorization"][0]["concept"]["text"].startswith("paid in full: PaymentNotice/")


async def test_charge_items_and_invoices_name_payments_in_their_provenance(client):
    await build(client)
    out = await payments(client, method="POST", site="site-fr", start="2026-01-01", end="2026-06-30", persist=True)
    ref = sites_of(out)["ResearchStudy/site-fr"]["invoice"]
    inv = (await client.get(f"/{ref}")).json()
    why = "$payments persist for ResearchStudy/pay-study, site site-fr, period 2026-01-01..2026-06-30"
    for target in [ref, *(li["chargeItemReference"]["reference"] for li in inv["lineItem"])]:
        (prov,) = (await _provenances(client, target)).values()
        assert prov["authorization"][0]["concept"]["text"] == why, target
        assert prov["activity"]["text"] == "$payments"
        assert [c["code"] for c in prov["activity"]["coding"]] == ["operation", "CREATE"]
    # the client's own reason follows the operation's; the Group's too, all sites, no period
    r = await client.post("/ResearchStudy/pay-study/$payments", headers={"X-Reason": "month-end run"}, json={
        "resourceType": "Parameters", "parameter": [{"name": "persist", "valueBoolean": True}]})
    assert r.status_code == 200, r.text
    gb = sites_of(r.json())["ResearchStudy/site-gb"]["invoice"]
    (prov,) = (await _provenances(client, gb)).values()
    assert prov["authorization"][0]["concept"]["text"] == (
        "$payments persist for ResearchStudy/pay-study, site site-fr, site-gb, all dates: month-end run")
    # an ordinary write keeps its own reason
    r = await client.put(f"/{ref}", json={**inv, "status": "issued"}, headers={"X-Reason": "approved"})
    assert (await _provenances(client, ref))["2"]["authorization"][0]["concept"]["text"] == "approved"


async def test_holdback_release_pays_what_the_invoices_withheld(client):
    """site-fr (EUR), the w2 fee 333.25 with 10 % withheld:

    run 1, 2026-01-01..2026-02-28: s-fr-1 w2 333.25 - 33.33 = 299.92 (invoice A).
    The w2 fee is then raised to 400.00 (holdback 40.00).
    run 2, 2026-03-01..2026-06-30: s-fr-2 w2 400.00 - 40.00 = 360.00; close-out 2000.00; the
      release = 33.33 (withheld on invoice A, not 40.00 recomputed) + 40.00 (this run) = 73.33
      (invoice B: net 360.00 + 2000.00 + 73.33 = 2433.33).
    A w4 visit of s-fr-1 done 2026-05-10 (fee 100.00, 10 %) is recorded after the release was
    invoiced: paid without holdback, 100.00 (invoice C); the release stays 73.33.
    """
    await build(client)
    out = await payments(client, method="POST", site="site-fr", start="2026-01-01", end="2026-02-28", persist=True)
    a = (await client.get("/" + sites_of(out)["ResearchStudy/site-fr"]["invoice"])).json()
    assert a["totalNet"]["value"] == 299.92
    assert (await client.put("/ChargeItemDefinition/fee-v-study",
                             json=fee("fee-v-study", "visit-completed", "400.00", "EUR", "w2", "0.10"))).status_code == 200
    site_part = sites_of(await payments(client, site="site-fr", start="2026-03-01", end="2026-06-30"))["ResearchStudy/site-fr"]
    ev = events(site_part)
    assert (ev["visit/s-fr-2/w2"]["gross"], ev["visit/s-fr-2/w2"]["holdback"]) == (eur("400.00"), eur("40.00"))
    release = ev["holdback-release/site-fr"]
    assert (release["status"], release["gross"], release["holdback"], release["net"], release["due"]) == (
        "release", eur("73.33"), eur("0"), eur("73.33"), eur("73.33"))
    out = await payments(client, method="POST", site="site-fr", start="2026-03-01", end="2026-06-30", persist=True)
    b = (await client.get("/" + sites_of(out)["ResearchStudy/site-fr"]["invoice"])).json()
    assert (b["totalGross"]["value"], b["totalNet"]["value"]) == (2473.33, 2433.33)
    # a later visit, invoiced after the release: no holdback (nothing would release it)
    w4 = fee("fee-w4-fr", "visit-completed", "100.00", "EUR", "w4", "0.10", country="FR")
    for r in [w4, *visit("s-fr-1", "w4", "1.0", "2026-05-05", "2026-05-15", "2026-05-10")]:
        assert (await client.put(f"/{r['resourceType']}/{r['id']}", json=r)).status_code == 201
    site_part = sites_of(await payments(client, site="site-fr", start="2026-01-01", end="2026-06-30"))["ResearchStudy/site-fr"]
    ev = events(site_part)
    late = ev["visit/s-fr-1/w4"]
    assert (late["status"], late["gross"], late["holdback"], late["net"], late["due"]) == (
        "payable", eur("100.00"), eur("0"), eur("100.00"), eur("100.00"))
    assert "without holdback" in late["note"]
    assert (ev["holdback-release/site-fr"]["net"], ev["holdback-release/site-fr"]["due"]) == (eur("73.33"), eur("0"))
    out = await payments(client, method="POST", site="site-fr", start="2026-01-01", end="2026-06-30", persist=True)
    assert {p["name"]: p for p in out["parameter"]}["chargeItemsCreated"]["valueInteger"] == 1
    c = (await client.get("/" + sites_of(out)["ResearchStudy/site-fr"]["invoice"])).json()
    (line,) = c["lineItem"]
    assert [pc["type"] for pc in line["priceComponent"]] == ["base"] and c["totalNet"]["value"] == 100
    # read again: the late visit invoiced without holdback, the release as invoiced, nothing due;
    # the only mismatch is s-fr-1's w2, invoiced before the fee changed
    site_part = sites_of(await payments(client, site="site-fr", start="2026-01-01", end="2026-06-30"))["ResearchStudy/site-fr"]
    ev = events(site_part)
    assert (ev["visit/s-fr-1/w4"]["holdback"], ev["visit/s-fr-1/w4"]["invoiced"]) == (eur("0"), eur("100.00"))
    assert ev["holdback-release/site-fr"]["invoiced"] == eur("73.33") and site_part["due"] == eur("0")
    assert [(d["code"], d.get("key")) for d in site_part.get("discrepancy", []) if d["code"] == "invoice-mismatch"] == [
        ("invoice-mismatch", "visit/s-fr-1/w2")]


async def test_invalid_fees_and_a_site_fee_in_another_currency(client):
    """Fee values are checked: a negative randomisation fee (an unprofiled definition: the write
    accepts it) is reported invalid-fee and pays nothing; a holdback factor of 1.5 on the GB w2
    fee likewise. A site-scoped JPY fee for site-fr's activation does not move site-fr to JPY:
    it is a currency discrepancy and pays nothing; site-fr stays in EUR (its country's fees).

    site-gb, 2026-01-01..2026-04-30, from test_report_every_figure's 9800.00 / 465.00 / 9335.00:
    the four randomisations (4 x 1000.00 gross, 4 x 100.00 holdback) and the two w2 visits
    (300.00/30.00 and 350.00/35.00: fee-v-gb-1 and -2; only -1 is broken, so s-gb-1's w2 is not
    paid, s-gb-2's, under protocol 2.0, is) drop out: gross 9800 - 4000 - 300 = 5500.00,
    holdback 465 - 400 - 30 = 35.00, net 5465.00."""
    await build(client)
    U = "http://example.org/fhir/ChargeItemDefinition/"
    bad_rand = fee("fee-rand-gb", "subject-milestone", "-1000.00", "GBP", "randomised", "0.10", country="GB")
    bad_w2 = fee("fee-v-gb-1", "visit-completed", "300.00", "GBP", "w2", "1.5", country="GB", protocol="1.0")
    jpy = fee("fee-start-fr-jpy", "site-milestone", "800000", "JPY", "activated", site_id="site-fr")
    for f in (bad_rand, bad_w2, jpy):
        r = await client.put(f"/ChargeItemDefinition/{f['id']}", json=f)
        assert r.status_code in (200, 201), r.text
    gb = sites_of(await payments(client, site="site-gb", start="2026-01-01", end="2026-04-30"))["ResearchStudy/site-gb"]
    ev = events(gb)
    invalid = sorted(k for k, e in ev.items() if e.get("issue") == "invalid-fee")
    assert invalid == ["subject-milestone/s-gb-1/randomised", "subject-milestone/s-gb-2/randomised",
                       "subject-milestone/s-gb-3/randomised", "subject-milestone/s-gb-7/randomised",
                       "visit/s-gb-1/w2"]
    assert all(ev[k]["net"] == gbp("0") and ev[k]["status"] == "not-paid" for k in invalid)
    assert ev["visit/s-gb-2/w2"]["status"] == "payable"
    assert (gb["gross"], gb["holdback"], gb["net"]) == (gbp("5500"), gbp("35"), gbp("5465"))
    defs = [d for d in gb["discrepancy"] if d["code"] == "invalid-fee" and "key" not in d]
    assert [d["definition"] for d in defs] == [[f"{U}fee-rand-gb|1"], [f"{U}fee-v-gb-1|1"]]
    assert "not above 0" in defs[0]["note"] and "1.5" in defs[1]["note"]
    assert "rate-changed" not in [d["code"] for d in gb["discrepancy"]]  # an invalid fee is no rate
    # nothing invalid is ever charged
    out = await payments(client, method="POST", site="site-gb", start="2026-01-01", end="2026-04-30", persist=True)
    inv = (await client.get("/" + sites_of(out)["ResearchStudy/site-gb"]["invoice"])).json()
    assert (inv["totalGross"]["value"], inv["totalNet"]["value"]) == (5500, 5465)

    fr = sites_of(await payments(client, site="site-fr", start="2026-01-01", end="2026-06-30"))["ResearchStudy/site-fr"]
    assert fr["currency"] == "EUR"
    act = events(fr)["site-milestone/site-fr/activated"]
    assert (act["status"], act["issue"], act["definition"]) == ("not-paid", "currency", [f"{U}fee-start-fr-jpy|1"])
    (cur,) = [d for d in fr["discrepancy"] if d["code"] == "currency" and "key" not in d]
    assert cur["definition"] == [f"{U}fee-start-fr-jpy|1"] and "JPY" in cur["note"] and "EUR" in cur["note"]
    # the rest is paid in EUR as before
    assert (fr["gross"], fr["holdback"], fr["net"]) == (eur("2733.16"), eur("66.66"), eur("2666.5"))


async def test_payment_file_defuses_formulas(client):
    """A text cell starting with = + - @ is written with a single quote before it (CSV injection):
    the payee's name, the site's title; amounts stay numbers."""
    await build(client)
    org = {"resourceType": "Organization", "id": "org-fr", "name": '=HYPERLINK("http://evil.example","pay")',
           "identifier": [{"system": "https://example.org/vendor", "value": "V-FR-1"}]}
    assert (await client.put("/Organization/org-fr", json=org)).status_code == 200
    site_fr = (await client.get("/ResearchStudy/site-fr")).json()
    assert (await client.put("/ResearchStudy/site-fr", json={**site_fr, "title": "@SUM(1+1)"})).status_code == 200
    out = await payments(client, method="POST", site="site-fr", persist=True)
    ref = sites_of(out)["ResearchStudy/site-fr"]["invoice"]
    inv = (await client.get(f"/{ref}")).json()
    assert (await client.put(f"/{ref}", json={**inv, "status": "issued"})).status_code == 200
    r = await client.get(f"/{ref}/$payment-file")
    assert r.status_code == 200
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert {row["payee_name"] for row in rows} == {"'" + org["name"]}
    assert {row["site_title"] for row in rows} == {"'@SUM(1+1)"}
    assert {row["payee_identifier"] for row in rows} == {"https://example.org/vendor|V-FR-1"}  # harmless: as it is
    assert (rows[-1]["gross"], rows[-1]["net"]) == ("2733.16", "2666.50")
    assert not any(cell.startswith(("=", "+", "-", "@")) for row in rows for cell in row.values())


async def test_payment_notice_under_a_token(repo):
    """The balancing is an update of the Invoice under the caller's token: a token that may write
    PaymentNotices but not update Invoices records a part payment, and a paying notice is refused
    (403) whole; with Invoice update it balances the invoice, the token's user its author."""
    from .conftest import make_client
    from .smart import minter, registered

    mint = minter(await registered(repo))

    async with make_client(repo) as open_, make_client(repo, auth_enabled=True) as http:
        await build(open_)
        ref, _ = await _issued_fr_invoice(open_)
        notices_only = await mint("user/PaymentNotice.cru")
        r = await http.put("/PaymentNotice/pn-1", json=_notice("pn-1", ref, 2000.00), headers=notices_only)
        assert r.status_code == 201, r.text
        r = await http.put("/PaymentNotice/pn-2", json=_notice("pn-2", ref, 666.50), headers=notices_only)
        assert r.status_code == 403 and outcome_codes(r) == ["forbidden"], r.text
        assert (await open_.get("/PaymentNotice/pn-2")).status_code == 404
        assert (await open_.get(f"/{ref}")).json()["status"] == "issued"
        both = await mint("user/PaymentNotice.cru user/Invoice.ru")
        r = await http.put("/PaymentNotice/pn-2", json=_notice("pn-2", ref, 666.50), headers=both)
        assert r.status_code == 201, r.text
        now = (await open_.get(f"/{ref}")).json()
        assert (now["status"], now["meta"]["versionId"]) == ("balanced", "3")
        prov = await _provenances(open_, ref)
        assert prov["3"]["agent"][0]["who"]["display"] == "alice"
        assert prov["3"]["authorization"][0]["concept"]["text"] == "paid in full: PaymentNotice/pn-2"


async def test_the_finance_role_runs_payments_and_milestones(repo):
    """The CTMS's own finance role (auth/roles.py) holds what $payments reads and writes: a
    token with exactly its scopes reports, persists and reads milestones; a monitor's reads but
    cannot persist (it may not create ChargeItems), and nothing is written."""
    from fhir_ctms.auth.roles import DEFAULT

    from .conftest import make_client
    from .smart import minter, registered

    mint = minter(await registered(repo))

    async def bearer(role: str) -> dict[str, str]:
        return await mint(" ".join(DEFAULT[role]), subject=role, roles=(role,))

    async with make_client(repo) as open_, make_client(repo, auth_enabled=True) as http:
        await build(open_)
        period = {"site": "site-gb", "start": "2026-01-01", "end": "2026-03-15"}
        monitor, finance = await bearer("monitor"), await bearer("finance")
        r = await http.post("/ResearchStudy/pay-study/$payments", params={**period, "persist": "true"}, headers=monitor)
        assert r.status_code == 403, r.text
        assert (await open_.get("/ChargeItem", params={"_summary": "count"})).json()["total"] == 0
        r = await http.get("/ResearchStudy/pay-study/$payments", params=period, headers=finance)
        assert r.status_code == 200, r.text
        r = await http.post("/ResearchStudy/pay-study/$payments", params={**period, "persist": "true"}, headers=finance)
        assert r.status_code == 200, r.text
        assert (await open_.get("/ChargeItem", params={"_summary": "count"})).json()["total"] == 6
        assert (await http.get("/ResearchStudy/pay-study/$milestones", headers=finance)).status_code == 200
