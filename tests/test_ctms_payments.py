"""The pure payment rules of ``fhir_ctms/ctms/payments.py``: rounding, fee selection by scope,
detail, protocol and date, caps, the holdback release, rate changes and settlement."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from fhir_ctms.ctms import payments as pay

D = Decimal
P = "http://example.org/fhir/PlanDefinition/p"


def day(s: str) -> dt.date:
    return dt.date.fromisoformat(s)


def fee(canonical: str, kind: str = "visit-completed", amount: str = "100.00", currency: str = "GBP",
        detail: str | None = None, site: str | None = None, country: str | None = None,
        start: str | None = None, end: str | None = None, protocol: str | None = None,
        factor: str = "0", cap: int | None = None) -> pay.Fee:
    return pay.Fee(canonical, kind, detail, site, country, day(start) if start else None,
                   day(end) if end else None, protocol, D(amount), currency, D(factor), cap)


def event(key: str, on: str, kind: str = "visit-completed", detail: str | None = "w2",
          protocol: str | None = None, site: str = "s1") -> pay.Event:
    return pay.Event(key, kind, detail, site, day(on), f"Encounter/{key}", protocol=protocol)


SITE = {"resourceType": "ResearchStudy", "id": "s1",
        "region": [{"coding": [{"system": pay.ISO3166, "code": "GB"}]}]}


def test_rounding_is_half_up_to_the_minor_unit():
    assert pay.holdback_of(D("333.25"), D("0.10"), "EUR") == D("33.33")    # 33.325 -> up
    assert pay.holdback_of(D("333.35"), D("0.10"), "EUR") == D("33.34")    # 33.335 -> up
    assert pay.holdback_of(D("333.24"), D("0.10"), "EUR") == D("33.32")    # 33.324 -> down
    assert pay.holdback_of(D("1005"), D("0.15"), "JPY") == D("151")        # 150.75 -> 151, no minor unit
    assert pay.holdback_of(D("10.005"), D("1"), "KWD") == D("10.005")      # three decimals
    assert pay.money("0.005", "GBP") == D("0.01") and pay.money("2.5", "JPY") == D("3")


def test_the_most_specific_fee_wins():
    fees = [fee("study"), fee("country", country="GB", amount="110"), fee("site", site="s1", amount="120"),
            fee("other-site", site="s2", amount="999"), fee("fr", country="FR", amount="999")]
    assert pay.select(fees, event("a", "2026-02-01"), "GB").canonical == "site"
    assert pay.select(fees[:2], event("a", "2026-02-01"), "GB").canonical == "country"
    assert pay.select([fees[0], fees[4]], event("a", "2026-02-01"), "GB").canonical == "study"
    assert pay.select([fees[3], fees[4]], event("a", "2026-02-01"), "GB") is None
    # a fee naming the visit beats one for any visit of the same scope; another visit's does not apply
    fees = [fee("any"), fee("w2", detail="w2", amount="130"), fee("w4", detail="w4", amount="140")]
    assert pay.select(fees, event("a", "2026-02-01"), "GB").canonical == "w2"
    assert pay.select(fees, event("b", "2026-02-01", detail="w8"), "GB").canonical == "any"


def test_rate_by_date_and_protocol():
    fees = [fee("old", end="2026-03-31", amount="100"), fee("new", start="2026-04-01", amount="120")]
    assert pay.select(fees, event("a", "2026-03-31"), "GB").canonical == "old"   # end inclusive
    assert pay.select(fees, event("a", "2026-04-01"), "GB").canonical == "new"
    both = [fee("v1", protocol=f"{P}|1.0", amount="100"), fee("v2", protocol=f"{P}|2.0", amount="150")]
    assert pay.select(both, event("a", "2026-05-01", protocol=f"{P}|1.0"), "GB").canonical == "v1"
    assert pay.select(both, event("a", "2026-05-01", protocol=f"{P}|2.0"), "GB").canonical == "v2"
    assert pay.select(both, event("a", "2026-05-01", protocol=None), "GB") is None
    # two definitions in force at once, same scope: the later start wins
    overlap = [fee("a", start="2026-01-01", amount="100"), fee("b", start="2026-02-01", amount="105")]
    assert pay.select(overlap, event("x", "2026-03-01"), "GB").canonical == "b"


def test_caps_holdback_and_release():
    fees = [fee("sf", kind="screen-failure", amount="150", cap=2),
            fee("v", amount="333.25", factor="0.10"),
            fee("close", kind="site-milestone", detail="closed", amount="2000")]
    evs = [event("sf/1", "2026-01-05", "screen-failure", None), event("sf/2", "2026-01-06", "screen-failure", None),
           event("sf/3", "2026-01-07", "screen-failure", None),
           event("v/1", "2026-02-01"), event("v/2", "2026-02-02"),
           event("close", "2026-06-30", "site-milestone", "closed"),
           pay.Event("release", "holdback-release", None, "s1", day("2026-06-30"), "ResearchStudy/s1")]
    lines = {ln.event.key: ln for ln in pay.price_site(SITE, evs, fees)}
    assert [lines[k].status for k in ("sf/1", "sf/2", "sf/3")] == ["payable", "payable", "capped"]
    assert lines["sf/3"].net == 0 and "cap of 2" in (lines["sf/3"].note or "")
    assert (lines["v/1"].gross, lines["v/1"].holdback, lines["v/1"].net) == (D("333.25"), D("33.33"), D("299.92"))
    # the release: 33.33 + 33.33 withheld, no holdback of its own
    assert (lines["release"].status, lines["release"].gross, lines["release"].holdback, lines["release"].net) == \
        ("release", D("66.66"), D("0"), D("66.66"))
    total_net = sum(ln.net for ln in lines.values())
    assert total_net == D("150") * 2 + D("299.92") * 2 + D("2000") + D("66.66")


def test_invoiced_events_count_against_the_cap_first():
    fees = [fee("sf", kind="screen-failure", amount="150", cap=2)]
    evs = [event(f"sf/{n}", f"2026-01-0{n}", "screen-failure", None) for n in (1, 2, 3, 4)]
    # sf/3 and sf/4 were invoiced before sf/1 and sf/2 (dated earlier) were recorded
    lines = {ln.event.key: ln for ln in pay.price_site(SITE, evs, fees, {"sf/3", "sf/4"})}
    assert [lines[f"sf/{n}"].status for n in (1, 2, 3, 4)] == ["capped", "capped", "payable", "payable"]
    # one invoiced: it keeps its payment, and the cap's one other place goes to the earliest
    lines = {ln.event.key: ln for ln in pay.price_site(SITE, evs, fees, {"sf/4"})}
    assert [lines[f"sf/{n}"].status for n in (1, 2, 3, 4)] == ["payable", "capped", "capped", "payable"]
    # more invoiced than the cap (a cap lowered later): they keep their payment, nothing new is paid
    lines = {ln.event.key: ln for ln in pay.price_site(SITE, evs, [fee("sf", kind="screen-failure", cap=1)],
                                                       {"sf/2", "sf/3"})}
    assert [lines[f"sf/{n}"].status for n in (1, 2, 3, 4)] == ["capped", "payable", "payable", "capped"]


def test_not_paid_events_and_currency():
    # GB's fees are in GBP: the site is paid in GBP; the study-wide EUR fee prices an event: reported
    fees = [fee("gbp", amount="100", country="GB"),
            fee("eur-ms", kind="subject-milestone", detail="randomised", currency="EUR")]
    evs = [event("v/1", "2026-02-01"), event("r/1", "2026-02-02", "subject-milestone", "randomised"),
           event("x/1", "2026-02-03", "procedure", "ct")]
    lines = {ln.event.key: ln for ln in pay.price_site(SITE, evs, fees)}
    assert lines["v/1"].status == "payable"
    assert (lines["r/1"].status, lines["r/1"].issue) == ("not-paid", "currency")
    assert "is in EUR, the site is paid in GBP" in (lines["r/1"].note or "")
    assert (lines["x/1"].status, lines["x/1"].issue) == ("not-paid", "no-fee")
    # a study-wide fee in another currency is not a problem of the schedule by itself
    assert pay.site_currency(SITE, fees) == ("GBP", [])


def test_rate_changes_in_the_period():
    fees = [fee("old", end="2026-03-31", amount="100"), fee("new", start="2026-04-01", amount="120")]
    evs = [event("v/1", "2026-03-15"), event("v/2", "2026-04-15")]
    lines = pay.price_site(SITE, evs, fees)
    assert [ln.gross for ln in lines] == [D("100.00"), D("120.00")]
    found = pay.rate_changes(SITE, fees, lines, day("2026-03-01"), day("2026-04-30"))
    assert [d.code for d in found] == ["rate-changed"] and found[0].definitions == ("old", "new")
    # a period inside one rate: nothing to report
    assert pay.rate_changes(SITE, fees, lines[:1], day("2026-03-01"), day("2026-03-31")) == []


def test_fee_from_a_charge_item_definition():
    cid = {"resourceType": "ChargeItemDefinition", "url": "http://x/cid", "version": "2", "status": "active",
           "code": {"coding": [{"system": pay.EVENT_CS, "code": "screen-failure"}]},
           "extension": [{"url": pay.CAP_EXT, "valuePositiveInt": 3}],
           "useContext": [{"code": {"system": pay.USAGE, "code": "program"}, "valueReference": {"reference": "ResearchStudy/st"}},
                          {"code": {"system": pay.USAGE, "code": "venue"},
                           "valueCodeableConcept": {"coding": [{"system": pay.ISO3166, "code": "DE"}]}}],
           "applicability": [{"effectivePeriod": {"start": "2026-01-01", "end": "2026-12-31"},
                              "relatedArtifact": {"type": "depends-on", "resource": f"{P}|2.0"}}],
           "propertyGroup": [{"priceComponent": [
               {"type": "base", "amount": {"value": 99.5, "currency": "EUR"}},
               {"type": "deduction", "code": {"coding": [{"system": pay.EVENT_CS, "code": "holdback"}]}, "factor": 0.2}]}]}
    f = pay.fee(cid, "st")
    assert f is not None and (f.canonical, f.kind, f.country, f.site, f.cap, f.protocol) == \
        ("http://x/cid|2", "screen-failure", "DE", None, 3, f"{P}|2.0")
    assert (f.amount, f.currency, f.factor, f.start, f.end) == (D("99.50"), "EUR", D("0.2"), day("2026-01-01"), day("2026-12-31"))
    assert pay.fee(cid, "another-study") is None
    assert pay.fee({**cid, "status": "retired"}, "st") is None


def test_settled():
    inv = {"id": "i1", "status": "issued", "totalNet": {"value": 2666.5, "currency": "EUR"}}

    def notice(amount: float, status: str = "active", currency: str = "EUR", to: str = "Invoice/i1") -> dict:
        return {"status": status, "request": {"reference": to}, "amount": {"value": amount, "currency": currency}}
    assert not pay.settled(inv, [notice(2000)])
    assert pay.settled(inv, [notice(2000), notice(666.5)])
    assert not pay.settled(inv, [notice(2000), notice(666.5, status="cancelled")])
    assert not pay.settled(inv, [notice(2000), notice(666.5, currency="GBP")])
    assert not pay.settled(inv, [notice(2000), notice(666.5, to="Invoice/i2")])
    assert not pay.settled({**inv, "status": "draft"}, [notice(3000)])


def test_rate_change_by_protocol_counts_only_versions_the_site_ran():
    site = {**SITE, "extension": [
        {"url": pay.SITE_PROTOCOL, "extension": [{"url": "protocol", "valueCanonical": f"{P}|1.0"},
                                                 {"url": "effective", "valueDate": "2026-01-01"}]},
        {"url": pay.SITE_PROTOCOL, "extension": [{"url": "protocol", "valueCanonical": f"{P}|2.0"},
                                                 {"url": "effective", "valueDate": "2026-07-01"}]}]}
    fees = [fee("v1", protocol=f"{P}|1.0", amount="100"), fee("v2", protocol=f"{P}|2.0", amount="120")]
    assert pay.site_protocols(site, day("2026-06-01"), day("2026-06-30")) == {f"{P}|1.0"}
    assert pay.site_protocols(site, day("2026-06-01"), day("2026-07-31")) == {f"{P}|1.0", f"{P}|2.0"}
    assert pay.site_protocols(site, None, None) == {f"{P}|1.0", f"{P}|2.0"}
    lines = pay.price_site(site, [event("v/1", "2026-06-10", protocol=f"{P}|1.0")], fees)
    assert pay.rate_changes(site, fees, lines, day("2026-06-01"), day("2026-06-30")) == []
    found = pay.rate_changes(site, fees, lines, day("2026-06-01"), day("2026-07-31"))
    assert [d.definitions for d in found] == [("v1", "v2")]


# -- the site's currency (profiles/README.md: country-level fees, else study-wide, else site) ----

DE_SITE = {"resourceType": "ResearchStudy", "id": "de1", "region": [{"coding": [{"system": pay.ISO3166, "code": "DE"}]}]}


def test_a_site_scoped_fee_in_another_currency_is_reported_not_the_sites_currency():
    """The reviewer's case: a German site paid from study-wide EUR fees gets a site-scoped JPY
    start-up fee. The site stays in EUR; the JPY fee is a currency discrepancy and pays nothing;
    the visits are paid in EUR, although the start-up event comes first."""
    fees = [fee("visit-eur", amount="300.00", currency="EUR", factor="0.10"),
            fee("start-jpy", kind="site-milestone", detail="activated", amount="800000", currency="JPY", site="de1")]
    currency, problems = pay.site_currency(DE_SITE, fees)
    assert currency == "EUR"
    assert [(d.code, d.definitions) for d in problems] == [("currency", ("start-jpy",))]
    assert "JPY" in problems[0].note and "EUR" in problems[0].note
    evs = [event("start", "2026-01-05", "site-milestone", "activated", site="de1"),
           event("v/1", "2026-02-01", site="de1")]
    lines = {ln.event.key: ln for ln in pay.price_site(DE_SITE, evs, fees)}
    assert (lines["start"].status, lines["start"].issue, lines["start"].net) == ("not-paid", "currency", D("0"))
    assert (lines["v/1"].status, lines["v/1"].gross, lines["v/1"].holdback, lines["v/1"].net) == \
        ("payable", D("300.00"), D("30.00"), D("270.00"))
    # a country-level DE fee in EUR: still EUR; a site-level EUR fee does not change it either
    fees.append(fee("de-visit", amount="320.00", currency="EUR", country="DE"))
    assert pay.site_currency(DE_SITE, fees)[0] == "EUR"
    # only site-level fees: the site's own (they agree)
    assert pay.site_currency(DE_SITE, [fees[1]]) == ("JPY", [])


def test_a_site_whose_fees_disagree_has_no_currency_and_is_paid_nothing():
    fees = [fee("visit-eur", amount="300.00", currency="EUR"),
            fee("rand-usd", kind="subject-milestone", detail="randomised", amount="1000.00", currency="USD")]
    currency, problems = pay.site_currency(DE_SITE, fees)
    assert currency is None and [d.code for d in problems] == ["currency"]
    assert "EUR, USD" in problems[0].note and problems[0].definitions == ("rand-usd", "visit-eur")
    evs = [event("v/1", "2026-02-01", site="de1"), event("r/1", "2026-02-02", "subject-milestone", "randomised", site="de1"),
           pay.Event("release", "holdback-release", None, "de1", day("2026-06-30"), "ResearchStudy/de1")]
    lines = pay.price_site(DE_SITE, evs, fees)
    assert [(ln.event.key, ln.status, ln.issue) for ln in lines] == [
        ("v/1", "not-paid", "currency"), ("r/1", "not-paid", "currency")]  # and no release line


# -- fee values (the ctms-fee invariants) -------------------------------------------------------

def _definition(*components: dict, **extra) -> dict:
    return {"resourceType": "ChargeItemDefinition", "id": "f", "url": "http://x/f", "version": "1", "status": "active",
            "code": {"coding": [{"system": pay.EVENT_CS, "code": "visit-completed"}]},
            "useContext": [{"code": {"system": pay.USAGE, "code": "program"},
                            "valueReference": {"reference": "ResearchStudy/st"}}],
            "propertyGroup": [{"priceComponent": list(components)}], **extra}


def _base(value, currency="EUR") -> dict:
    amount = {"value": value}
    if currency:
        amount["currency"] = currency
    return {"type": "base", "amount": amount}


def _holdback(factor) -> dict:
    return {"type": "deduction", "code": {"coding": [{"system": pay.EVENT_CS, "code": "holdback"}]}, "factor": factor}


def test_invalid_fee_values_pay_nothing():
    ok = pay.fee(_definition(_base(100), _holdback(0.1)), "st")
    assert ok is not None and ok.problem is None and (ok.amount, ok.factor) == (D("100.00"), D("0.1"))
    assert pay.fee(_definition(_base(100), _holdback(0)), "st").problem is None
    bad = {
        "negative amount": _definition(_base(-100), _holdback(0.1)),
        "zero amount": _definition(_base(0)),
        "no currency": _definition(_base(100, currency=None)),
        "factor 1.5": _definition(_base(100), _holdback(1.5)),
        "factor 1": _definition(_base(100), _holdback(1)),
        "factor -0.2": _definition(_base(100), _holdback(-0.2)),
        "two bases": _definition(_base(100), _base(50)),
        "no base": _definition(_holdback(0.1)),
    }
    for name, definition in bad.items():
        f = pay.fee(definition, "st")
        assert f is not None and f.problem, name
        assert (f.amount, f.factor) == (D("0"), D("0")), name
    assert "not above 0" in pay.fee(bad["negative amount"], "st").problem
    assert "1.5" in pay.fee(bad["factor 1.5"], "st").problem
    assert "2 base" in pay.fee(bad["two bases"], "st").problem
    # the reviewer's figures: -100 gross, 1.5 giving a negative net, -0.2 paying more than the fee:
    # none is paid; the event is reported invalid-fee with the definition
    for name in ("negative amount", "factor 1.5", "factor -0.2"):
        f = pay.fee(bad[name], "st")
        (ln,) = pay.price_site(SITE, [event("v/1", "2026-02-01")], [fee("good", amount="100", currency="EUR"), f])
        assert (ln.status, ln.issue, ln.gross, ln.holdback, ln.net) == ("not-paid", "invalid-fee", 0, 0, 0), name
        assert ln.fee is f and "cannot pay" in (ln.note or "")
        found = pay.invalid_fees(SITE, [f], None, None)
        assert [(d.code, d.definitions) for d in found] == [("invalid-fee", ("http://x/f|1",))]


# -- procedures ---------------------------------------------------------------------------------

SCT = "http://snomed.info/sct"


def _subject(sid: str, consent: str | None = "c1", withdrawn: str | None = None) -> dict:
    progress = [{"subjectState": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/research-subject-state",
                                              "code": "on-study"}]}, "startDate": "2026-01-01"}]
    if withdrawn:
        progress.append({"subjectState": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/research-subject-state",
                                                      "code": "withdrawn"}]}, "startDate": withdrawn})
    out = {"resourceType": "ResearchSubject", "id": sid, "study": {"reference": "ResearchStudy/s1"},
           "subject": {"reference": f"Patient/p-{sid}"}, "progress": progress}
    if consent:
        out["consent"] = [{"reference": f"Consent/{consent}"}]
    return out


def _visit(sid: str, action: str, done: str, status: str = "completed") -> tuple[dict, dict]:
    appt = {"resourceType": "Appointment", "id": f"a-{sid}-{action}",
            "identifier": [{"system": pay.VISIT_SYSTEM, "value": f"{sid}/{action}"}],
            "extension": [{"url": pay.PROTOCOL_VISIT, "valueCanonical": f"{P}|2.0#{action}"}],
            "requestedPeriod": [{"start": "2026-01-01", "end": "2026-12-31"}]}
    enc = {"resourceType": "Encounter", "id": f"e-{sid}-{action}", "status": status,
           "subject": {"reference": f"Patient/p-{sid}"}, "appointment": [{"reference": f"Appointment/{appt['id']}"}],
           "actualPeriod": {"start": f"{done}T09:00:00Z"}}
    return appt, enc


def _procedure(pid: str, sid: str, enc: str | None, code: tuple[str, str] | None = (SCT, "77477000"),
               status: str = "completed", **occurrence) -> dict:
    out = {"resourceType": "Procedure", "id": pid, "status": status, "subject": {"reference": f"Patient/p-{sid}"}}
    if code:
        out["code"] = {"coding": [{"system": code[0], "code": code[1]}]}
    if enc:
        out["encounter"] = {"reference": f"Encounter/{enc}"}
    out.update(occurrence)
    return out


def test_procedure_events():
    """Completed Procedures of a site's subject done during one of the subject's study visits,
    keyed procedure/<id>, dated occurrence[x] (else the visit), detail system|code."""
    subjects = [_subject("r1"), _subject("r2", withdrawn="2026-03-01"), _subject("r3", consent=None)]
    consents = {"c1": {"resourceType": "Consent", "id": "c1", "status": "active"}}
    a1, e1 = _visit("r1", "w12", "2026-02-10")
    a2, e2 = _visit("r2", "w12", "2026-03-10")
    a3, e3 = _visit("r3", "w12", "2026-02-12")
    procs = [
        _procedure("ct-1", "r1", "e-r1-w12", occurrenceDateTime="2026-02-10T10:00:00Z"),
        _procedure("ct-1b", "r1", "e-r1-w12", code=("http://loinc.org", "24627-2"),
                   occurrencePeriod={"start": "2026-02-11T08:00:00Z"}),
        _procedure("ct-2", "r2", "e-r2-w12"),                        # after the withdrawal, the visit's date
        _procedure("ct-3", "r3", "e-r3-w12", occurrenceDateTime="2026-02-12"),  # no consent
        _procedure("not-done", "r1", "e-r1-w12", status="in-progress", occurrenceDateTime="2026-02-10"),
        _procedure("no-visit", "r1", None, occurrenceDateTime="2026-02-10"),   # standard of care
        _procedure("other-visit", "r1", "e-r2-w12", occurrenceDateTime="2026-02-10"),  # another subject's visit
    ]
    consents["c1"]["subject"] = {"reference": "Patient/p-r1"}
    subjects[1]["consent"] = [{"reference": "Consent/c1"}]
    events = {ev.key: ev for ev in pay.site_events(SITE, subjects, consents, [a1, a2, a3], [e1, e2, e3], procs)
              if ev.kind == "procedure"}
    assert sorted(events) == ["procedure/ct-1", "procedure/ct-1b", "procedure/ct-2", "procedure/ct-3"]
    ct1 = events["procedure/ct-1"]
    assert (ct1.on, ct1.detail, ct1.source, ct1.encounter, ct1.subject, ct1.patient, ct1.protocol, ct1.issue) == (
        day("2026-02-10"), f"{SCT}|77477000", "Procedure/ct-1", "e-r1-w12", "r1", "p-r1", f"{P}|2.0", None)
    assert events["procedure/ct-1b"].on == day("2026-02-11")
    assert (events["procedure/ct-2"].on, events["procedure/ct-2"].issue) == (day("2026-03-10"), "after-withdrawal")
    assert events["procedure/ct-3"].issue == "no-consent"

    # priced: a fee naming the CT scan code (GBP at a GB site, 10 % holdback); the LOINC-coded
    # procedure has no fee; a fee whose detail is not a code is reported not-derived
    fees = [fee("ct-gb", kind="procedure", detail=f"{SCT}|77477000", amount="412.50", country="GB", factor="0.10"),
            fee("visit", amount="100", country="GB"),
            fee("ecg", kind="procedure", detail="ecg", amount="80", country="GB")]
    lines = {ln.event.key: ln for ln in pay.price_site(SITE, list(events.values()), fees)}
    # 412.50 x 0.10 = 41.25; net 371.25
    assert (lines["procedure/ct-1"].status, lines["procedure/ct-1"].fee.canonical, lines["procedure/ct-1"].gross,
            lines["procedure/ct-1"].holdback, lines["procedure/ct-1"].net) == \
        ("payable", "ct-gb", D("412.50"), D("41.25"), D("371.25"))
    assert (lines["procedure/ct-1b"].status, lines["procedure/ct-1b"].issue) == ("not-paid", "no-fee")
    assert lines["procedure/ct-2"].issue == "after-withdrawal" and lines["procedure/ct-3"].issue == "no-consent"
    assert [d.definitions for d in pay.not_derived(SITE, fees, None, None)] == [("ecg",)]
    # a fee may name any coding of the procedure
    two = pay.Event(
        "procedure/x", "procedure", f"{SCT}|77477000", "s1", day("2026-02-10"), "Procedure/x",
        codes=(f"{SCT}|77477000", "http://loinc.org|24627-2"))
    assert pay.select([fee("loinc", kind="procedure", detail="http://loinc.org|24627-2", country="GB")], two, "GB") is not None
    assert pay.is_code(f"{SCT}|77477000") and not pay.is_code("ecg") and not pay.is_code("|1") and not pay.is_code("a|")
