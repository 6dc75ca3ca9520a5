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
    fees = [fee("gbp", amount="100"), fee("eur-ms", kind="subject-milestone", detail="randomised", currency="EUR")]
    evs = [event("v/1", "2026-02-01"), event("r/1", "2026-02-02", "subject-milestone", "randomised"),
           event("x/1", "2026-02-03", "procedure", "ct")]
    lines = {ln.event.key: ln for ln in pay.price_site(SITE, evs, fees)}
    assert lines["v/1"].status == "payable"
    assert (lines["r/1"].status, lines["r/1"].issue) == ("not-paid", "currency")
    assert (lines["x/1"].status, lines["x/1"].issue) == ("not-paid", "no-fee")


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
