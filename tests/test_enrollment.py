"""``$enrollment`` through the HTTP API, on every database (tests/conftest.py).

A small study is built by hand below and every count, date and rate is worked out in the
comments; the forecast's figures come from the model (tests/test_forecast.py tests it), so here
they are checked against the fitted parameters the response reports and for sense.

The study ``enr`` (target 22), evaluated on D = 2026-07-01:

- country ``enr-uk`` (no targetNumber: the sum of its sites', 6 + 6 = 12):
  - site ``enr-uk-1``, target 6, activated 2026-03-03: 120 active days to D
    (Mar 3 -> Apr 3 31, -> May 3 30, -> Jun 3 31, -> Jul 1 28);
  - site ``enr-uk-2``, target 6, activated 2026-05-02: 60 days (May 2 -> Jun 2 31, -> Jul 1 29);
    no recruit yet (one subject in screening);
- country ``enr-de`` (target 10):
  - site ``enr-de-1``, target 6, activated 2026-04-02: 90 days (Apr 2 -> May 2 30, -> Jun 2 31,
    -> Jul 1 29);
  - site ``enr-de-2``, target 4, not activated: planned activation 2026-08-01.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Any

import pytest
from fhir.resources.parameters import Parameters

from fhir_ctms.ctms import forecast as fc

pytestmark = pytest.mark.asyncio

LEVEL = "http://fhir-ctms.org/fhir/CodeSystem/study-level"
MILESTONE = "http://fhir-ctms.org/fhir/CodeSystem/site-milestone"
REASON = "http://fhir-ctms.org/fhir/CodeSystem/subject-progress-reason"
D = "2026-07-01"


def study(rid: str, level: str, target: int | None, part_of: str | None = None,
          milestones: list[tuple[str, bool, str]] = (), region: str | None = None) -> dict:
    r: dict[str, Any] = {
        "resourceType": "ResearchStudy", "id": rid, "status": "active", "title": f"Title {rid}",
        "classifier": [{"coding": [{"system": LEVEL, "code": level}]}]}
    if part_of:
        r["partOf"] = [{"reference": f"ResearchStudy/{part_of}"}]
    if region:
        r["region"] = [{"coding": [{"system": "urn:iso:std:iso:3166", "code": region}]}]
    if target is not None:
        r["recruitment"] = {"targetNumber": target}
    if milestones:
        r["progressStatus"] = [{"state": {"coding": [{"system": MILESTONE, "code": code}]},
                                "actual": actual, "period": {"start": start}}
                               for code, actual, start in milestones]
    return r


def subject(rid: str, site: str, *progress: tuple) -> dict:
    """progress: (state, start[, reason]) in order; each entry ends when the next starts."""
    entries = []
    for i, p in enumerate(progress):
        state, start = p[0], p[1]
        e: dict[str, Any] = {"subjectState": {"coding": [
            {"system": "http://terminology.hl7.org/CodeSystem/research-subject-state", "code": state}]},
            "startDate": start}
        if i + 1 < len(progress):
            e["endDate"] = progress[i + 1][1]
        if len(p) > 2:
            e["reason"] = {"coding": [{"system": REASON, "code": p[2]}]}
        if state == "on-study":
            e["milestone"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/research-subject-milestone",
                                          "code": "Randomized"}]}
        entries.append(e)
    return {"resourceType": "ResearchSubject", "id": rid, "status": "active",
            "identifier": [{"system": "http://example.org/subject", "value": rid}],
            "study": {"reference": f"ResearchStudy/{site}"},
            "subject": {"reference": f"Patient/p-{rid}"}, "progress": entries}


ACT = "activated"
RESOURCES = [
    study("enr", "study", 22),
    study("enr-uk", "country", None, "enr", region="GB"),
    study("enr-de", "country", 10, "enr", region="DE"),
    study("enr-uk-1", "site", 6, "enr-uk", [(ACT, False, "2026-03-01"), (ACT, True, "2026-03-03")], "GB"),
    study("enr-uk-2", "site", 6, "enr-uk", [(ACT, True, "2026-05-02")], "GB"),
    study("enr-de-1", "site", 6, "enr-de", [(ACT, True, "2026-04-02")], "DE"),
    study("enr-de-2", "site", 4, "enr-de", [(ACT, False, "2026-08-01")], "DE"),
    # enr-uk-1: screened 6, screen failures 1, enrolled 4 (a1 a2 a3 a5), active 2 (a1 a2),
    # withdrawn 1 (a3), completed 1 (a5); a6 goes on study after D, so on D only screened
    subject("a1", "enr-uk-1", ("screening", "2026-03-10"), ("on-study", "2026-03-20")),
    subject("a2", "enr-uk-1", ("screening", "2026-03-12"), ("on-study", "2026-03-25"),
            ("follow-up", "2026-06-01")),
    subject("a3", "enr-uk-1", ("screening", "2026-04-01"), ("on-study", "2026-04-10"),
            ("withdrawn", "2026-05-15", "withdrawn-by-subject")),
    subject("a4", "enr-uk-1", ("screening", "2026-04-05"), ("ineligible", "2026-04-12", "screen-failure")),
    subject("a5", "enr-uk-1", ("screening", "2026-03-05"), ("on-study", "2026-03-15"),
            ("off-study", "2026-06-20", "completed")),
    subject("a6", "enr-uk-1", ("screening", "2026-06-25"), ("on-study", "2026-07-05")),
    # enr-uk-2: screened 1, nothing else
    subject("b1", "enr-uk-2", ("screening", "2026-06-20")),
    # enr-de-1: screened 4 (c1-c4; c5 is only a candidate), enrolled 3 (c1 c2 c3), active 2,
    # withdrawn 2 (c3 lost to follow-up after enrolment, c4 consent withdrawn in screening)
    subject("c1", "enr-de-1", ("screening", "2026-04-05"), ("on-study", "2026-04-15")),
    subject("c2", "enr-de-1", ("screening", "2026-04-06"), ("on-study", "2026-04-20")),
    subject("c3", "enr-de-1", ("screening", "2026-05-01"), ("on-study", "2026-05-10"),
            ("off-study", "2026-06-15", "lost-to-follow-up")),
    subject("c4", "enr-de-1", ("screening", "2026-06-01"), ("withdrawn", "2026-06-05", "consent-withdrawn")),
    subject("c5", "enr-de-1", ("candidate", "2026-06-28")),
]

COUNTS = ("target", "screened", "screenFailures", "enrolled", "active", "withdrawn", "completed")
EXPECTED_COUNTS = {
    "enr-uk-1": (6, 6, 1, 4, 2, 1, 1),
    "enr-uk-2": (6, 1, 0, 0, 0, 0, 0),
    "enr-de-1": (6, 4, 0, 3, 2, 2, 0),
    "enr-de-2": (4, 0, 0, 0, 0, 0, 0),
    # the countries: the sums of their sites
    "enr-uk": (12, 7, 1, 4, 2, 1, 1),
    "enr-de": (10, 4, 0, 3, 2, 2, 0),
    # the study: the sums of the countries
    "enr": (22, 11, 1, 7, 4, 3, 1),
}
EXPECTED = {
    # percent = 100 enrolled / target, 1 decimal; rate = 30 enrolled / days (site: its active
    # days; country, study: days since the first site activation); ratePerSite = 30 enrolled /
    # the sum of the sites' active days
    "enr-uk-1": {"percentOfTarget": 66.7,          # 400 / 6 = 66.67
                 "activated": "2026-03-03", "plannedActivation": "2026-03-01",
                 "siteDays": 120, "activeSites": 1,
                 "rate": 1.0, "ratePerSite": 1.0},  # 30 * 4 / 120
    "enr-uk-2": {"percentOfTarget": 0.0, "activated": "2026-05-02", "siteDays": 60,
                 "activeSites": 1, "rate": 0.0, "ratePerSite": 0.0},  # 30 * 0 / 60
    "enr-de-1": {"percentOfTarget": 50.0,          # 300 / 6
                 "activated": "2026-04-02", "siteDays": 90, "activeSites": 1,
                 "rate": 1.0, "ratePerSite": 1.0},  # 30 * 3 / 90
    "enr-de-2": {"percentOfTarget": 0.0, "plannedActivation": "2026-08-01", "siteDays": 0,
                 "activeSites": 0},              # no rate: no active day
    "enr-uk": {"percentOfTarget": 33.3,            # 400 / 12
               "activated": "2026-03-03", "activeSites": 2,
               "siteDays": 180,                    # 120 + 60
               "rate": 1.0,                        # 30 * 4 / 120 (since 2026-03-03)
               "ratePerSite": 0.67},               # 30 * 4 / 180 = 0.667
    "enr-de": {"percentOfTarget": 30.0,            # 300 / 10
               "activated": "2026-04-02", "activeSites": 1, "siteDays": 90,
               "rate": 1.0, "ratePerSite": 1.0},    # 30 * 3 / 90 both
    "enr": {"percentOfTarget": 31.8,               # 700 / 22 = 31.82
            "activated": "2026-03-03", "activeSites": 3,
            "siteDays": 270,                       # 120 + 60 + 90
            "rate": 1.75,                          # 30 * 7 / 120
            "ratePerSite": 0.78},                  # 30 * 7 / 270 = 0.778
}


async def load(client, resources: list[dict]) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
        for r in resources]}
    r = await client.post("", json=bundle)
    assert r.status_code == 200, r.text


def value(part: dict) -> Any:
    v = next(v for k, v in part.items() if k.startswith("value"))
    return v["reference"] if isinstance(v, dict) and "reference" in v else v


def rows(params: dict) -> dict[str, dict[str, Any]]:
    """The level parameters by id: {name: value}, plus "level"."""
    out = {}
    for p in params["parameter"]:
        if p["name"] in ("study", "country", "site"):
            row = {q["name"]: value(q) for q in p["part"]}
            row["level"] = p["name"]
            out[row["reference"].split("/")[1]] = row
    return out


def model(params: dict) -> dict[str, Any]:
    p = next(p for p in params["parameter"] if p["name"] == "model")
    return {q["name"]: value(q) for q in p["part"]}


async def test_counts_rates_and_forecast_at_every_level(client):
    await load(client, RESOURCES)
    r = await client.get("/ResearchStudy/enr/$enrollment", params={"date": D})
    assert r.status_code == 200, r.text
    body = r.json()
    Parameters.model_validate(body)
    assert body["parameter"][0] == {"name": "date", "valueDate": D}
    got = rows(body)
    assert set(got) == set(EXPECTED_COUNTS)
    for rid, counts in EXPECTED_COUNTS.items():
        assert tuple(got[rid][c] for c in COUNTS) == counts, rid
        for name, want in EXPECTED[rid].items():
            assert got[rid][name] == want, (rid, name)
    assert [got[i]["level"] for i in ("enr", "enr-uk", "enr-uk-1")] == ["study", "country", "site"]
    assert got["enr-uk-1"]["partOf"] == "ResearchStudy/enr-uk"
    assert got["enr-uk"]["partOf"] == "ResearchStudy/enr"
    assert got["enr-uk-1"]["region"] == "GB"
    assert "rate" not in got["enr-de-2"] and "activated" not in got["enr-de-2"]

    # the model: three sites with active days, k = (4, 0, 3), tau = (120, 60, 90)
    m = model(body)
    # 0/60, 3/90 and 4/120 are within Poisson noise of one rate (the likelihood-ratio statistic
    # of equal rates is 0): the pooled model, one common rate Gamma(7 + 1/2, 270)
    f = fc.fit([4, 0, 3], [120, 60, 90])
    assert m["method"] == "pooled" == f.method and "equal rates" in m["note"]
    assert (m["sites"], m["recruits"], m["siteDays"]) == (3, 7, 270)
    assert (m["alpha"], m["beta"]) == (7.5, 270.0)
    assert m["likelihoodRatio"] < 2.706
    assert m["meanRate"] == 0.83  # 30 * 7.5 / 270 = 0.833
    assert (m["lagProbability"], m["lagMinDays"]) == (0.1, 30)
    # every open site's posterior mean rate is the common rate
    assert [got[s]["posteriorRate"] for s in ("enr-uk-1", "enr-uk-2", "enr-de-1")] == [0.83] * 3
    # lagging, on each site's own data: P(<= k in tau days) at 7.5 / 270 = 0.027778 per day
    # enr-uk-2: 0 in 60 days, mean 1.6667: e^-1.6667 = 0.1889 (poisson.cdf(0, 1.6667))
    # enr-uk-1: 4 in 120 days, mean 3.3333: poisson.cdf(4, 3.3333) = 0.7565
    # enr-de-1: 3 in 90 days, mean 2.5: poisson.cdf(3, 2.5) = 0.7576
    # all >= 0.10 and no planned enrolment-closed milestone: none lagging
    for rid, prob in (("enr-uk-2", 0.1889), ("enr-uk-1", 0.7565), ("enr-de-1", 0.7576)):
        assert got[rid]["lagProbability"] == pytest.approx(prob, abs=1e-4), rid
        assert got[rid]["lagging"] is False and "laggingReason" not in got[rid]
    assert "lagging" not in got["enr-de-2"] and "posteriorRate" not in got["enr-de-2"]
    assert "lagProbability" not in got["enr-de-2"]

    # the forecasts: after D, ordered, and near the deterministic answer (days = remaining /
    # the sum of the sites' mean rates, the planned site adding its mean from Aug 1)
    day = dt.date.fromisoformat(D)
    post = {rid: f.mean_rate for rid in ("enr-uk-1", "enr-uk-2", "enr-de-1")}
    prior, opens = f.alpha / f.beta, 31  # enr-de-2 opens on 2026-08-01, day 31
    for rid, remaining, rates, planned in (("enr", 15, list(post.values()), True),
                                           ("enr-uk", 8, [post["enr-uk-1"], post["enr-uk-2"]], False),
                                           ("enr-de", 7, [post["enr-de-1"]], True),
                                           ("enr-uk-1", 2, [post["enr-uk-1"]], False)):
        row = got[rid]
        low, median, high = (dt.date.fromisoformat(row[n]) for n in
                             ("forecastLow", "forecastMedian", "forecastHigh"))
        assert day <= low <= median <= high, rid
        total = sum(rates)
        days = remaining / total
        if planned and days > opens:  # solve total t + prior (t - 31) = remaining
            days = (remaining + prior * opens) / (total + prior)
        assert (median - day).days == pytest.approx(days, rel=0.2), rid
        assert row["targetMet"] is False
    # the planned site alone: the prior from 2026-08-01, 4 recruits to go
    de2 = got["enr-de-2"]
    assert dt.date.fromisoformat(de2["forecastMedian"]) > dt.date(2026, 8, 1)
    # the same call twice gives the same answer (fixed seed)
    again = await client.post("/ResearchStudy/enr/$enrollment", json={
        "resourceType": "Parameters", "parameter": [{"name": "date", "valueDate": D}]})
    assert again.status_code == 200 and again.json() == body


async def test_evaluation_date_moves_the_figures(client):
    await load(client, RESOURCES)
    # on 2026-07-10, a6 is on study (2026-07-05): enr-uk-1 enrolled 5, active 3;
    # active days 120 + 9 = 129
    got = rows((await client.get("/ResearchStudy/enr/$enrollment", params={"date": "2026-07-10"})).json())
    assert (got["enr-uk-1"]["enrolled"], got["enr-uk-1"]["active"], got["enr-uk-1"]["siteDays"]) == (5, 3, 129)
    # on 2026-04-01 only enr-uk-1 was open (29 days: Mar 3 -> Apr 1); a5 (Mar 15), a1 (Mar 20),
    # a2 (Mar 25) enrolled: 3; enr-de-1 (activated Apr 2) shows its activation as planned
    # only if it had a planned entry: it has none, so neither date
    got = rows((await client.get("/ResearchStudy/enr/$enrollment", params={"date": "2026-04-01"})).json())
    assert (got["enr-uk-1"]["enrolled"], got["enr-uk-1"]["siteDays"]) == (3, 29)
    assert "activated" not in got["enr-de-1"] and got["enr-de-1"]["activeSites"] == 0
    assert got["enr"]["activeSites"] == 1 and got["enr"]["rate"] == pytest.approx(30 * 3 / 29, abs=0.01)
    m = model((await client.get("/ResearchStudy/enr/$enrollment", params={"date": "2026-04-01"})).json())
    # one site with active days: fewer than 3, the pooled fallback, Gamma(K + 1/2, T) = (3.5, 29)
    assert m["method"] == "pooled" and m["alpha"] == 3.5 and m["beta"] == 29.0
    assert "note" in m


async def test_target_already_met(client):
    await load(client, [
        study("met", "study", 2),
        study("met-1", "site", 2, "met", [(ACT, True, "2026-01-05")]),
        subject("m1", "met-1", ("screening", "2026-02-01"), ("on-study", "2026-02-10")),
        subject("m2", "met-1", ("screening", "2026-02-02"), ("on-study", "2026-02-20")),
        subject("m3", "met-1", ("screening", "2026-02-03"), ("on-study", "2026-03-01")),
    ])
    got = rows((await client.get("/ResearchStudy/met/$enrollment", params={"date": D})).json())
    for rid in ("met", "met-1"):
        row = got[rid]
        # the 2nd enrolment (the target) was on 2026-02-20; 3 of 2: 150.0%
        assert row["enrolled"] == 3 and row["percentOfTarget"] == 150.0
        assert row["targetMet"] is True and row["targetMetOn"] == "2026-02-20"
        assert row["forecastMedian"] == "2026-02-20"
        assert "forecastLow" not in row and "forecastHigh" not in row
        assert row["forecastNote"] == "target met"


async def test_no_activated_site(client):
    await load(client, [
        study("new", "study", 10),
        study("new-1", "site", 10, "new", [(ACT, False, "2026-09-01")]),
    ])
    body = (await client.get("/ResearchStudy/new/$enrollment", params={"date": D})).json()
    assert model(body)["method"] == "none"
    got = rows(body)
    assert got["new"]["enrolled"] == 0 and got["new"]["activeSites"] == 0
    assert "forecastMedian" not in got["new"] and "no activated site" in got["new"]["forecastNote"]
    assert got["new-1"]["plannedActivation"] == "2026-09-01"


async def test_on_a_country_or_a_site(client):
    """Invoked on a country or a site: that part of the study's report, same figures."""
    await load(client, RESOURCES)
    full = rows((await client.get("/ResearchStudy/enr/$enrollment", params={"date": D})).json())
    de = rows((await client.get("/ResearchStudy/enr-de/$enrollment", params={"date": D})).json())
    assert set(de) == {"enr-de", "enr-de-1", "enr-de-2"}
    assert de == {k: full[k] for k in de}
    one = rows((await client.get("/ResearchStudy/enr-uk-1/$enrollment", params={"date": D})).json())
    assert one == {"enr-uk-1": full["enr-uk-1"]}


async def test_csv(client):
    await load(client, RESOURCES)
    r = await client.get("/ResearchStudy/enr/$enrollment", params={"date": D, "_format": "csv"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(r.text)))
    assert [t["reference"] for t in table] == [
        "ResearchStudy/enr", "ResearchStudy/enr-de", "ResearchStudy/enr-uk", "ResearchStudy/enr-de-1",
        "ResearchStudy/enr-de-2", "ResearchStudy/enr-uk-1", "ResearchStudy/enr-uk-2"]
    uk1 = table[5]
    assert (uk1["level"], uk1["enrolled"], uk1["screenFailures"], uk1["rate"], uk1["siteDays"],
            uk1["activated"], uk1["partOf"]) == ("site", "4", "1", "1.0", "120", "2026-03-03",
                                                 "ResearchStudy/enr-uk")
    assert uk1["lagging"] in ("true", "false")
    assert table[4]["rate"] == ""  # enr-de-2: no active day
    text = await client.get("/ResearchStudy/enr/$enrollment", params={"date": D, "_format": "text/csv"})
    assert text.text == r.text
    # _format=csv is for operations only: elsewhere still a 406
    assert (await client.get("/ResearchStudy", params={"_format": "csv"})).status_code == 406


async def test_bad_input(client):
    await load(client, RESOURCES)
    r = await client.get("/ResearchStudy/nope/$enrollment")
    assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"
    for bad in ("2026-13-01", "2026-07", "yesterday", "2026-02-30"):
        r = await client.get("/ResearchStudy/enr/$enrollment", params={"date": bad})
        assert r.status_code == 400, bad
        assert r.json()["resourceType"] == "OperationOutcome"
    r = await client.get("/ResearchStudy/enr/$enrollment", params={"colour": "red"})
    assert r.status_code == 400
    r = await client.post("/ResearchStudy/enr/$enrollment", json={
        "resourceType": "Parameters", "parameter": [{"name": "date", "valueInteger": 3}]})
    assert r.status_code == 400
    # not defined at the type level
    assert (await client.get("/ResearchStudy/$enrollment")).status_code == 404
    # deleted
    assert (await client.delete("/ResearchStudy/enr-uk-2")).status_code in (200, 204)
    assert (await client.get("/ResearchStudy/enr-uk-2/$enrollment")).status_code == 410


async def test_default_date_is_today(client):
    await load(client, RESOURCES)
    body = (await client.get("/ResearchStudy/enr/$enrollment")).json()
    assert body["parameter"][0]["valueDate"] == dt.datetime.now(dt.timezone.utc).date().isoformat()


async def test_capability_statement_lists_it(client):
    cs = (await client.get("/metadata")).json()
    ops = [o for r in cs["rest"][0]["resource"] if r["type"] == "ResearchStudy"
           for o in r.get("operation", [])]
    assert any(o["name"] == "enrollment" and o["definition"].endswith("ResearchStudy-enrollment")
               for o in ops)


async def test_lagging_site(client):
    """Four sites open 90 days (2026-04-02 to D) with 10, 12, 9 and 0 recruits: the rates
    differ beyond Poisson noise (the Poisson-gamma model, alpha finite), and the site with none
    is lagging: at the study's mean rate alpha / beta = 0.073026 per day (alpha 0.8366, beta
    11.456, fitted), 90 days make a Poisson mean of 6.5723 and P(0) = e^-6.5723 = 0.0014
    (poisson.cdf(0, 6.5723)); the others: poisson.cdf(10, 6.5723) = 0.9290, poisson.cdf(12,
    6.5723) = 0.9826, poisson.cdf(9, 6.5723) = 0.8711. A fifth site open 20 days (2026-06-11)
    with none is too new to be judged (P(0) = e^-1.4605 = 0.2321 reported all the same)."""
    resources = [study("lag", "study", 100)]
    for n, k in enumerate((10, 12, 9, 0), 1):
        resources.append(study(f"lag-{n}", "site", 25, "lag", [(ACT, True, "2026-04-02")]))
        resources += [subject(f"l{n}-{i}", f"lag-{n}", ("screening", "2026-04-03"),
                              ("on-study", "2026-04-05")) for i in range(k)]
    resources.append(study("lag-5", "site", 25, "lag", [(ACT, True, "2026-06-11")]))
    await load(client, resources)
    body = (await client.get("/ResearchStudy/lag/$enrollment", params={"date": D})).json()
    got, m = rows(body), model(body)
    f = fc.fit([10, 12, 9, 0, 0], [90, 90, 90, 90, 20])
    assert m["method"] == "poisson-gamma" and m["alpha"] == pytest.approx(f.alpha, rel=1e-3)
    assert f.alpha < 100
    assert [got[f"lag-{n}"]["lagging"] for n in range(1, 6)] == [False, False, False, True, False]
    assert [got[f"lag-{n}"]["lagProbability"] for n in range(1, 6)] == pytest.approx(
        [0.9290, 0.9826, 0.8711, 0.0014, 0.2321], abs=1e-4)
    assert got["lag-4"]["laggingReason"].startswith("slow: 0 enrolled in 90 days")
    assert all("laggingReason" not in got[f"lag-{n}"] for n in (1, 2, 3, 5))
    assert got["lag-4"]["posteriorRate"] < 0.5 * m["meanRate"]
    assert got["lag"]["enrolled"] == 31 and got["lag"]["siteDays"] == 380  # 4 * 90 + 20


async def test_lagging_rules(client):
    """Each site on its own data, D = 2026-07-01. Sites activated 2026-01-02 (180 active days:
    Jan 2 -> Feb 2 31, -> Mar 2 28, -> Apr 2 31, -> May 2 30, -> Jun 2 31, -> Jul 1 29) with
    8, 7, 1 and 5 recruits, and one activated 2026-06-11 (20 days) with none: K = 21 over
    T = 740 site-days, within Poisson noise of one rate (likelihood-ratio statistic 0.39): the
    pooled model, mean rate (21 + 1/2) / 740 = 0.029054 per day, so over 180 days a Poisson
    of mean 5.2297:

    - pace-1 (8): poisson.cdf(8, 5.2297) = 0.9159; no planned close: not lagging;
    - pace-2 (7): poisson.cdf(7, 5.2297) = 0.8416; target 15 by 2026-12-31 (planned; Jan 2 ->
      Dec 31 = 363 days): 15 * 180 / 363 = 7.44 planned by now, 7 enrolled is less than one
      subject behind: not lagging;
    - pace-3 (1): poisson.cdf(1, 5.2297) = e^-5.2297 * 6.2297 = 0.0334 < 0.10: slow; target 6
      by 2026-12-31: 6 * 180 / 363 = 2.98 planned, 1 <= 1.98: behind plan too;
    - pace-4 (5): poisson.cdf(5, 5.2297) = 0.5757, not slow; target 12 by 2026-10-30 (planned;
      Jan 2 -> Oct 30 = 301 days): 12 * 180 / 301 = 7.18 planned, 5 <= 6.18: behind plan. Its
      actual enrolment-closed entry dated 2026-08-15 (after D) is not a plan and not a closing;
    - pace-5 (0 in 20 days): P(0) = e^-(0.029054 * 20) = 0.5593; open fewer than 30 days: false;
    - pace-6: enrolment closed on its activation day (no active day, so not in the model):
      not judged (no lagging part)."""
    planned = [(ACT, True, "2026-01-02")]
    plan_dec = [("enrolment-closed", False, "2026-12-31")]
    res = [study("pace", "study", 100),
           study("pace-1", "site", 16, "pace", planned),
           study("pace-2", "site", 15, "pace", planned + plan_dec),
           study("pace-3", "site", 6, "pace", planned + plan_dec),
           study("pace-4", "site", 12, "pace", planned + [("enrolment-closed", False, "2026-10-30"),
                                                         ("enrolment-closed", True, "2026-08-15")]),
           study("pace-5", "site", 5, "pace", [(ACT, True, "2026-06-11")]),
           study("pace-6", "site", 5, "pace", planned + [("enrolment-closed", True, "2026-01-02")])]
    for n, k in ((1, 8), (2, 7), (3, 1), (4, 5)):
        res += [subject(f"p{n}-{i}", f"pace-{n}", ("screening", "2026-01-10"),
                        ("on-study", "2026-01-20")) for i in range(k)]
    await load(client, res)
    body = (await client.get("/ResearchStudy/pace/$enrollment", params={"date": D})).json()
    got, m = rows(body), model(body)
    assert (m["method"], m["alpha"], m["beta"]) == ("pooled", 21.5, 740.0)
    assert [got[f"pace-{n}"]["lagProbability"] for n in range(1, 6)] == pytest.approx(
        [0.9159, 0.8416, 0.0334, 0.5757, 0.5593], abs=1e-4)
    assert [got[f"pace-{n}"].get("lagging") for n in range(1, 7)] == [
        False, False, True, True, False, None]
    r3, r4 = got["pace-3"]["laggingReason"], got["pace-4"]["laggingReason"]
    assert r3.startswith("slow: 1 enrolled in 180 days, P(<= 1) = 0.033") and \
        "behind plan: 1 enrolled, 3.0 planned by now (target 6 by 2026-12-31)" in r3
    assert r4 == "behind plan: 5 enrolled, 7.2 planned by now (target 12 by 2026-10-30)"
    assert all("laggingReason" not in got[f"pace-{n}"] for n in (1, 2, 5, 6))
    # the same in CSV
    table = {t["reference"]: t for t in csv.DictReader(io.StringIO((await client.get(
        "/ResearchStudy/pace/$enrollment", params={"date": D, "_format": "csv"})).text))}
    assert table["ResearchStudy/pace-4"]["laggingReason"] == r4
    assert table["ResearchStudy/pace-3"]["lagProbability"] == "0.0334"
    assert table["ResearchStudy/pace-6"]["lagging"] == ""


# -- the example study (examples/): its published numbers -----------------------------------------

EXAMPLES = __import__("pathlib").Path(__file__).resolve().parent.parent / "examples"


def _tables(readme: str) -> dict[str, list[dict[str, str]]]:
    """The Markdown tables of examples/README.md under each '### ' heading, as dicts."""
    out: dict[str, list[dict[str, str]]] = {}
    heading, head = None, None
    for line in readme.splitlines():
        if line.startswith("### "):
            heading, head = line[4:].strip(), None
        elif heading and line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
            if head is None:
                head = cells
            else:
                out.setdefault(heading, []).append(dict(zip(head, cells)))
        elif not line.strip().startswith("|"):
            head = None if line.strip() else head
    return out


async def test_the_example_study_matches_its_readme(client):
    """examples/README.md publishes the counts of the example (its 'today', 2026-11-23):
    $enrollment must find the same, for every site, country and the study."""
    readme = (EXAMPLES / "README.md").read_text()
    files = sorted(EXAMPLES.glob("acme-101-*.json"))
    if not files or "### Per site" not in readme:
        pytest.skip("the example study is not there")
    import json
    for f in files:  # the studies and subjects are enough for $enrollment (in load order)
        bundle = json.loads(f.read_text())
        await load(client, [e["resource"] for e in bundle["entry"]
                            if e["resource"]["resourceType"] in ("ResearchStudy", "ResearchSubject")])
    tables = _tables(readme)
    r = await client.get("/ResearchStudy/acme-101/$enrollment", params={"date": "2026-11-23"})
    assert r.status_code == 200, r.text
    got = rows(r.json())
    columns = {"target": "target", "screened": "screened", "screen failures": "screenFailures",
               "enrolled": "enrolled", "active": "active", "withdrawn": "withdrawn",
               "completed": "completed"}
    checked = 0
    for table, key in (("Per site", "site"), ("Per country", "ResearchStudy"), ("The study", "study")):
        for row in tables[table]:
            mine = got[row[key]]
            for col, name in columns.items():
                assert mine[name] == int(row[col]), (row[key], name)
            checked += 1
            if table == "Per site":
                act = row["activation"]
                if act.endswith("(planned)"):
                    assert "activated" not in mine and mine["plannedActivation"] == act.split()[0]
                else:
                    assert mine["activated"] == act, row[key]
    assert checked == len(tables["Per site"]) + len(tables["Per country"]) + 1 >= 5
    study = got["acme-101"]
    assert study["targetMet"] is False
    assert dt.date.fromisoformat(study["forecastMedian"]) > dt.date(2026, 11, 23)
    # the sites' counts are within Poisson noise of one rate: the pooled model (the mean rate's
    # uncertainty in the interval), not a Poisson-gamma fit with alpha at its bound
    assert model(r.json())["method"] == "pooled"
    # site-fr-03 recruited slowly (enrolment closed early, on 2026-03-02): on 2026-02-01 it
    # was open, 1 enrolled in 244 days against a plan of 6 by 2026-06-30 (393 days from its
    # activation on 2025-06-02): 6 * 244 / 393 = 3.7 planned, so behind plan, and the only
    # site lagging; today it is closed to enrolment and no longer judged
    then = rows((await client.get("/ResearchStudy/acme-101/$enrollment",
                                  params={"date": "2026-02-01"})).json())
    assert {k for k, v in then.items() if v.get("lagging") is True} == {"site-fr-03"}
    assert then["site-fr-03"]["laggingReason"] == \
        "behind plan: 1 enrolled, 3.7 planned by now (target 6 by 2026-06-30)"
    assert "lagging" not in got["site-fr-03"]


async def test_no_recruit_yet(client):
    """Three sites open 10 days (2026-06-21 to D), no recruit: the ML mean would be 0, so the
    pooled fallback Gamma(0 + 1/2, 30 site-days); a target of a million is beyond the horizon
    (no dates, a note, no error)."""
    await load(client, [study("zero", "study", 1_000_000)] + [
        study(f"zero-{n}", "site", None, "zero", [(ACT, True, "2026-06-21")]) for n in (1, 2, 3)])
    body = (await client.get("/ResearchStudy/zero/$enrollment", params={"date": D})).json()
    m, got = model(body), rows(body)
    assert (m["method"], m["alpha"], m["beta"]) == ("pooled", 0.5, 30.0)
    assert "no recruit yet" in m["note"]
    assert got["zero"]["siteDays"] == 30 and got["zero"]["rate"] == 0.0
    assert "forecastMedian" not in got["zero"] and "beyond 100 years" in got["zero"]["forecastNote"]
    assert "target" not in got["zero-1"] and got["zero-1"]["forecastNote"] == "no target"
    assert all(got[f"zero-{n}"]["lagging"] is False for n in (1, 2, 3))  # open < 30 days


async def test_the_ends_of_the_calendar(client):
    """Evaluation dates at the ends of the calendar, on the example study: a forecast past
    9999-12-31 is no date (the note says why), never a 500; on 0001-01-01 nothing has happened."""
    import json
    files = sorted(EXAMPLES.glob("acme-101-*.json"))
    if not files:
        pytest.skip("the example study is not there")
    for f in files:
        bundle = json.loads(f.read_text())
        await load(client, [e["resource"] for e in bundle["entry"]
                            if e["resource"]["resourceType"] in ("ResearchStudy", "ResearchSubject")])
    for fmt in ("json", "text/csv"):
        r = await client.get("/ResearchStudy/acme-101/$enrollment",
                             params={"date": "9999-12-31", "_format": fmt})
        assert r.status_code == 200, r.text
    got = rows((await client.get("/ResearchStudy/acme-101/$enrollment",
                                 params={"date": "9999-12-31"})).json())
    study = got["acme-101"]
    assert study["enrolled"] > 0
    for rid, row in got.items():
        if row.get("targetMet") is True:
            continue
        assert "forecastHigh" not in row, (rid, row)  # no date after the last one
        assert "forecastNote" in row, (rid, row)
    r = await client.get("/ResearchStudy/acme-101/$enrollment", params={"date": "0001-01-01"})
    assert r.status_code == 200, r.text
    got = rows(r.json())
    assert got["acme-101"]["enrolled"] == 0 and got["acme-101"]["activeSites"] == 0
