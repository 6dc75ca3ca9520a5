"""A synthetic, realistic, deterministic CTMS data set as NDJSON, for the search benchmark.

At ``--scale 1.0`` (1,159,806 resources, 1.08 GB of NDJSON, about 25 s):

| file                 | resources | what |
|----------------------|----------:|------|
| 01-organizations     |     4,150 | 150 sponsors (pharma, biotech, academic), 4,000 hospitals |
| 02-locations         |     4,000 | each hospital's clinical research unit |
| 03-studies           |     1,000 | ResearchStudy (see below) |
| 04-site-studies      |    20,000 | site-level ResearchStudy (see below) |
| 05-patients          |   200,000 | Patient: hospital MRN, name, gender, birthDate, address |
| 06-research-subjects |   200,000 | ResearchSubject (see below) |
| 07-encounters        |   644,018 | the visits that took place (see below) |
| 08-appointments      |    86,638 | visits booked, cancelled or missed (see below) |

- studies: NCT and sponsor protocol identifiers, title, label (acronym), phase, status,
  progressStatus, period, sponsor (associatedParty -> Organization), condition, region, arms,
  recruitment target;
- site-level studies: partOf the study, site -> Organization and Location, site number, phase,
  region, recruitment target, progressStatus; 1 to ~60 sites a study (phase 3 have more);
- subjects: study -> a site-level study, subject -> Patient, subject identifier, status (98%
  active), period, progress (subjectState, milestone, dates), arm; recruitment is skewed (a few
  sites recruit most: up to ~240 subjects at one site, median 8);
- encounters: 2024-01 to 2026-10, 2,000 to 31,000 a month (growing with recruitment):
  actualPeriod, status (96% completed), class, type, serviceType, subject -> Patient,
  serviceProvider, location, length, the study context;
- appointments: booked ahead (to 2027-04), cancelled or missed: start/end, status, serviceType,
  appointmentType, subject and participants (Patient, Location), the study context.

Every resource has a client-chosen id (``org-h-00001``, ``site-000001``, ``pat-000001``...), so
the files load with ``PUT`` (update-as-create) in file order and every reference resolves.
The visit protocol (``VISITS``) is screening, baseline, weeks 8, 24 and 52; about 25% of
subjects fail screening and some withdraw; visits before ``AS_OF`` (2026-11-01) happened
(Encounter) or were missed (Appointment, noshow); the next ones within six months are booked (Appointment).

R5 has no element linking an Encounter or Appointment to a ResearchStudy (``basedOn`` targets
requests and care plans only); the study context is the standard R5 extension
``http://hl7.org/fhir/StructureDefinition/workflow-researchStudy`` (valueReference -> the
site-level ResearchStudy), which is not a search parameter.

Output (``--out DIR``): ``NN-kind-PPPP.ndjson`` chunks of ``--chunk`` lines (file names sort
in load order; ``fhir-ctms import`` reads a whole NDJSON file into memory, then writes each line
in a transaction of its own, so chunks bound its memory and let a failed load resume at a file),
``samples.json`` (values that exist in the data, for ``bench/search_bench.py``) and
``manifest.json`` (seed, scale, counts, file sizes and SHA-256). The same ``--seed`` and
``--scale`` give byte-identical files.

Usage::

    .venv/bin/python bench/generate_ctms.py --scale 1.0 --out /data/ctms
    FHIR_CTMS_DATABASE_URL=sqlite+aiosqlite:////data/ctms.db .venv/bin/fhir-ctms import /data/ctms/*.ndjson

``--validate N`` (default 20) then runs the first N and N random resources of each kind through
the server's own validation (``fhir_ctms.resources.validate.validate_resource``, as on every
write) and search index extraction; a failure stops before ``manifest.json`` is written.
``--validate 0`` skips it.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import json
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent

GENERATOR_VERSION = 1

# -- sizes at scale 1.0 ---------------------------------------------------------------------
N_STUDIES = 1_000
N_SITE_STUDIES = 20_000
N_SPONSORS = 150
N_HOSPITALS = 4_000
N_PATIENTS = 200_000  # one ResearchSubject each

AS_OF = date(2026, 11, 1)  # "today" in the data: visits before it happened, later ones are booked
BOOK_AHEAD = timedelta(days=180)
ENROL_FROM, ENROL_TO = date(2024, 1, 15), date(2026, 10, 15)
#: the protocol's visits: (code, name, day relative to baseline)
VISITS = (("screening", "Screening", -14), ("baseline", "Baseline (Day 1)", 0), ("week-8", "Week 8", 56),
          ("week-24", "Week 24", 168), ("week-52", "End of study (Week 52)", 364))

# -- systems --------------------------------------------------------------------------------
NCT = "http://clinicaltrials.gov"
SPONSOR_PROTOCOL = "http://example.org/ctms/sponsor-protocol"
SITE_NUMBER = "http://example.org/ctms/site-number"
SUBJECT_ID = "http://example.org/ctms/subject-id"
VISIT_ID = "http://example.org/ctms/visit-id"
VISIT_TYPE = "http://example.org/ctms/CodeSystem/visit-type"
STUDY_EXT = "http://hl7.org/fhir/StructureDefinition/workflow-researchStudy"
PHASE = "http://hl7.org/fhir/research-study-phase"
STUDY_STATUS = "http://hl7.org/fhir/research-study-status"
PARTY_ROLE = "http://hl7.org/fhir/research-study-party-role"
PURPOSE = "http://hl7.org/fhir/research-study-prim-purp-type"
SUBJECT_STATE = "http://terminology.hl7.org/CodeSystem/research-subject-state"
STATE_TYPE = "http://terminology.hl7.org/CodeSystem/research-subject-state-type"
MILESTONE = "http://terminology.hl7.org/CodeSystem/research-subject-milestone"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
ORG_TYPE = "http://terminology.hl7.org/CodeSystem/organization-type"
LOC_TYPE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
ISO3166 = "urn:iso:std:iso:3166"

# -- vocabulary -----------------------------------------------------------------------------
CITIES = [  # (city, ISO 3166 country, hospital name stems)
    ("Amsterdam", "NL"), ("Rotterdam", "NL"), ("Utrecht", "NL"), ("Leiden", "NL"), ("Groningen", "NL"),
    ("London", "GB"), ("Manchester", "GB"), ("Birmingham", "GB"), ("Leeds", "GB"), ("Glasgow", "GB"),
    ("Edinburgh", "GB"), ("Oxford", "GB"), ("Cambridge", "GB"), ("Bristol", "GB"), ("Cardiff", "GB"),
    ("Berlin", "DE"), ("Munich", "DE"), ("Hamburg", "DE"), ("Cologne", "DE"), ("Frankfurt", "DE"),
    ("Heidelberg", "DE"), ("Dresden", "DE"), ("Leipzig", "DE"), ("Paris", "FR"), ("Lyon", "FR"),
    ("Marseille", "FR"), ("Toulouse", "FR"), ("Bordeaux", "FR"), ("Lille", "FR"), ("Nantes", "FR"),
    ("Madrid", "ES"), ("Barcelona", "ES"), ("Valencia", "ES"), ("Seville", "ES"), ("Bilbao", "ES"),
    ("Milan", "IT"), ("Rome", "IT"), ("Naples", "IT"), ("Turin", "IT"), ("Bologna", "IT"), ("Florence", "IT"),
    ("Brussels", "BE"), ("Leuven", "BE"), ("Ghent", "BE"), ("Vienna", "AT"), ("Graz", "AT"),
    ("Zurich", "CH"), ("Geneva", "CH"), ("Basel", "CH"), ("Copenhagen", "DK"), ("Aarhus", "DK"),
    ("Stockholm", "SE"), ("Gothenburg", "SE"), ("Uppsala", "SE"), ("Oslo", "NO"), ("Bergen", "NO"),
    ("Helsinki", "FI"), ("Tampere", "FI"), ("Warsaw", "PL"), ("Krakow", "PL"), ("Gdansk", "PL"),
    ("Prague", "CZ"), ("Brno", "CZ"), ("Budapest", "HU"), ("Lisbon", "PT"), ("Porto", "PT"),
    ("Dublin", "IE"), ("Cork", "IE"), ("Athens", "GR"), ("Boston", "US"), ("New York", "US"),
    ("Chicago", "US"), ("Houston", "US"), ("Philadelphia", "US"), ("Seattle", "US"), ("San Diego", "US"),
    ("Baltimore", "US"), ("Nashville", "US"), ("Denver", "US"), ("Atlanta", "US"), ("Cleveland", "US"),
    ("Rochester", "US"), ("Toronto", "CA"), ("Montreal", "CA"), ("Vancouver", "CA"), ("Sydney", "AU"),
    ("Melbourne", "AU"), ("Brisbane", "AU"), ("Tokyo", "JP"), ("Osaka", "JP"), ("Seoul", "KR"),
    ("Singapore", "SG"), ("Sao Paulo", "BR"), ("Buenos Aires", "AR"), ("Mexico City", "MX"),
]
HOSPITAL_KINDS = ["University Hospital", "Medical Centre", "General Hospital", "Cancer Centre", "Clinical Research "
                  "Institute", "Children's Hospital", "Heart Centre", "Teaching Hospital", "Regional Hospital",
                  "Infirmary", "Clinic", "Memorial Hospital", "Health Sciences Centre"]
SAINTS = ["St Mary's", "St Thomas'", "St George's", "St Luke's", "St James's", "St Anne's", "Holy Cross",
          "Sacred Heart", "Mercy", "Providence", "Good Samaritan", "Royal", "Queen Elizabeth", "King's",
          "Northern", "Southern", "Eastern", "Western", "Central", "Lakeside", "Riverside", "Hillcrest"]
SPONSOR_STEMS = ["Acme", "Novalis", "Brightwater", "Zentaro", "Helix", "Orbis", "Kestrel", "Aurora", "Meridian",
                 "Solvara", "Trident", "Quantis", "Verdant", "Altair", "Lumen", "Corvex", "Pinnacle", "Arcadia",
                 "Sirona", "Calyx", "Boreal", "Vireo", "Nexa", "Cygnus", "Halcyon", "Obelisk", "Tessera", "Umbra"]
SPONSOR_KINDS = [("Therapeutics", "bus"), ("Pharma", "bus"), ("Biosciences", "bus"), ("Oncology", "bus"),
                 ("Biologics", "bus"), ("Medicines", "bus"), ("Clinical Trials Unit", "edu"),
                 ("Research Foundation", "other"), ("Cooperative Group", "other")]
DRUG_HEADS = ["zen", "tora", "vel", "mira", "quin", "lor", "bexa", "cilo", "dara", "eli", "fosa", "gava", "iro",
              "kala", "luma", "nexo", "ola", "pexi", "rova", "sola", "tivo", "ubro", "vana", "xeno", "ziro", "arto"]
DRUG_MIDS = ["ti", "li", "ra", "ce", "do", "mo", "pa", "su", "ve", "ne", "ro", "ga", "fe", "zo", ""]
DRUG_TAILS = ["mab", "zumab", "ximab", "nib", "tinib", "ciclib", "stat", "pril", "sartan", "gliptin", "glutide",
              "parib", "lisib", "rafenib", "vastat", "dronate", "plase", "cept", "tide", "zomib"]
CONDITIONS = [  # (ICD-10 code, text, population)
    ("J45.9", "asthma", "adults"), ("J44.9", "chronic obstructive pulmonary disease", "adults"),
    ("E11.9", "type 2 diabetes mellitus", "adults"), ("E10.9", "type 1 diabetes mellitus", "adolescents and adults"),
    ("I50.9", "heart failure", "adults"), ("I10", "essential hypertension", "adults"),
    ("I48.91", "atrial fibrillation", "adults"), ("C50.9", "HER2-positive breast cancer", "women"),
    ("C34.90", "non-small cell lung cancer", "adults"), ("C18.9", "metastatic colorectal cancer", "adults"),
    ("C61", "metastatic prostate cancer", "men"), ("C25.9", "pancreatic adenocarcinoma", "adults"),
    ("C90.00", "multiple myeloma", "adults"), ("C91.10", "chronic lymphocytic leukaemia", "adults"),
    ("C43.9", "advanced melanoma", "adults"), ("M06.9", "rheumatoid arthritis", "adults"),
    ("L40.0", "plaque psoriasis", "adults"), ("K50.90", "Crohn's disease", "adults"),
    ("K51.90", "ulcerative colitis", "adults"), ("G35", "relapsing multiple sclerosis", "adults"),
    ("G30.9", "early Alzheimer's disease", "older adults"), ("G20", "Parkinson's disease", "adults"),
    ("G43.909", "migraine", "adults"), ("F32.9", "major depressive disorder", "adults"),
    ("F20.9", "schizophrenia", "adults"), ("N18.9", "chronic kidney disease", "adults"),
    ("K74.60", "non-alcoholic steatohepatitis", "adults"), ("E66.9", "obesity", "adults"),
    ("D57.1", "sickle cell disease", "children and adults"), ("E84.9", "cystic fibrosis", "children"),
    ("L20.9", "atopic dermatitis", "children and adults"), ("B20", "HIV-1 infection", "adults"),
    ("U07.1", "COVID-19", "adults"), ("J11.1", "influenza", "older adults"), ("M81.0", "osteoporosis", "women"),
    ("H35.30", "neovascular age-related macular degeneration", "older adults"),
]
TITLE_TEMPLATES = [
    "A Phase {ph}, Randomised, Double-blind, Placebo-controlled Study of {Drug} in {pop} with {cond}",
    "Efficacy and Safety of {Drug} in {pop} with {cond}",
    "{Drug} Versus Standard of Care in {pop} with {cond}",
    "A Study to Evaluate the Efficacy and Safety of {Drug} in {pop} with {cond}",
    "Long-term Safety and Tolerability of {Drug} in {pop} with {cond}",
    "An Open-label Extension Study of {Drug} in {pop} with {cond}",
    "A Multicentre Phase {ph} Trial of {Drug} Plus Standard Therapy in {pop} with {cond}",
    "Dose-ranging Study of {Drug} in {pop} with {cond}",
]
PHASES = [("phase-1", "1", 8), ("phase-1-phase-2", "1/2", 7), ("phase-2", "2", 30), ("phase-2-phase-3", "2/3", 6),
          ("phase-3", "3", 36), ("phase-4", "4", 13)]
PURPOSES = ["treatment"] * 8 + ["prevention", "supportive-care", "diagnostic", "health-services-research"]
GIVEN_F = ["Anna", "Chloe", "Emma", "Grace", "Ines", "Julia", "Lea", "Maria", "Nora", "Olivia", "Paula", "Sofia",
           "Yara", "Zoe", "Hannah", "Eva", "Mila", "Sara", "Lucia", "Ingrid", "Fatima", "Aiko", "Mei", "Priya"]
GIVEN_M = ["Ben", "David", "Farid", "Hugo", "Jonas", "Lucas", "Mateo", "Noah", "Omar", "Pieter", "Rafael", "Sam",
           "Tomas", "Victor", "Ahmed", "Erik", "Kenji", "Luca", "Marek", "Jan", "Arjun", "Daniel", "Felix", "Ivan"]
FAMILY = ["Smith", "Martin", "Okafor", "Novak", "Garcia", "Jensen", "Rossi", "Tanaka", "Dubois", "Khan", "Muller",
          "de Vries", "Janssen", "Kowalski", "Nielsen", "Silva", "Santos", "Fischer", "Weber", "Moreau", "Laurent",
          "Bianchi", "Romano", "Costa", "Haddad", "Nakamura", "Kim", "Lee", "Chen", "Wang", "Patel", "Singh",
          "O'Brien", "Murphy", "Andersson", "Lindqvist", "Virtanen", "Horvath", "Papadopoulos", "Yilmaz"]
STREETS = ["Main Street", "Station Road", "Church Lane", "Park Avenue", "Mill Road", "High Street", "Oak Drive",
           "Canal Street", "Market Square", "Elm Grove", "Harbour Way", "Castle Hill"]


def d(x: date) -> str:
    return x.isoformat()


def dt(x: date, minutes: int) -> str:
    """A local clinic time on day x, ``minutes`` after midnight, as a FHIR instant with offset."""
    return datetime(x.year, x.month, x.day, minutes // 60, minutes % 60, tzinfo=timezone(timedelta(hours=1))
                    ).isoformat()


def coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    c = {"system": system, "code": code}
    if display:
        c["display"] = display
    return c


def concept(system: str, code: str, display: str | None = None, text: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"coding": [coding(system, code, display)]}
    if text:
        out["text"] = text
    return out


def ref(rtype: str, rid: str, display: str | None = None) -> dict[str, Any]:
    r = {"reference": f"{rtype}/{rid}"}
    if display:
        r["display"] = display
    return r


# -- output ---------------------------------------------------------------------------------

class ChunkWriter:
    """``NN-kind-PPPP.ndjson`` files of at most ``chunk`` lines each."""

    def __init__(self, out: Path, prefix: str, chunk: int) -> None:
        self.out, self.prefix, self.chunk = out, prefix, chunk
        self.part = 0
        self.lines = 0
        self.total = 0
        self.fh = None
        self.files: list[Path] = []

    def write(self, resource: dict[str, Any]) -> None:
        if self.fh is None or self.lines >= self.chunk:
            self._next()
        self.fh.write(orjson.dumps(resource) + b"\n")
        self.lines += 1
        self.total += 1

    def _next(self) -> None:
        if self.fh is not None:
            self.fh.close()
        self.part += 1
        path = self.out / f"{self.prefix}-{self.part:04d}.ndjson"
        self.files.append(path)
        self.fh = path.open("wb")
        self.lines = 0

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


# -- the model ------------------------------------------------------------------------------

@dataclass
class Hospital:
    id: str
    name: str
    city: str
    country: str
    loc_id: str


@dataclass
class Study:
    n: int
    id: str
    nct: str
    protocol: str
    title: str
    title_prefix: str  #: the title up to the drug name (what a user types)
    phase: str
    start: date
    end: date | None  #: planned (active) or actual (retired) end; None for a draft
    status: str  #: PublicationStatus
    state: str  #: progressStatus state
    sponsor: str
    condition: tuple[str, str, str]
    sites: list[int] = field(default_factory=list)


@dataclass
class Site:
    n: int
    id: str
    study: int
    number: str
    hospital: int
    activated: date


def counts(scale: float) -> dict[str, int]:
    def n(x: int) -> int:
        return max(1, round(x * scale))
    c = {"studies": n(N_STUDIES), "site_studies": n(N_SITE_STUDIES), "sponsors": n(N_SPONSORS),
         "hospitals": n(N_HOSPITALS), "patients": n(N_PATIENTS)}
    c["site_studies"] = max(c["site_studies"], c["studies"])
    return c


class Generator:
    def __init__(self, seed: int, scale: float) -> None:
        self.seed, self.scale = seed, scale
        self.n = counts(scale)
        self.hospitals: list[Hospital] = []
        self.sponsors: list[tuple[str, str]] = []  # (id, name)
        self.studies: list[Study] = []
        self.sites: list[Site] = []
        self.subjects_per_site: list[int] = []

    def rng(self, section: str) -> random.Random:
        return random.Random(f"fhir-ctms-bench:{self.seed}:{section}")

    # -- organisations and locations -------------------------------------------------------
    def organizations(self) -> Iterator[dict[str, Any]]:
        r = self.rng("organizations")
        used: set[str] = set()
        for i in range(1, self.n["sponsors"] + 1):
            stem = r.choice(SPONSOR_STEMS)
            kind, otype = r.choice(SPONSOR_KINDS)
            name = f"{stem} {kind}"
            if name in used:
                name = f"{stem} {kind} {r.choice(['International', 'Europe', 'Global', 'Holdings', 'Research'])}"
            if name in used:
                name = f"{stem} {kind} {i}"
            used.add(name)
            oid = f"org-sp-{i:04d}"
            self.sponsors.append((oid, name))
            yield {"resourceType": "Organization", "id": oid, "active": True,
                   "identifier": [{"system": "http://example.org/ctms/sponsor", "value": f"SP{i:04d}"}],
                   "type": [concept(ORG_TYPE, otype)], "name": name,
                   "contact": [{"purpose": concept("http://terminology.hl7.org/CodeSystem/contactentity-type",
                                                   "ADMIN"),
                                "telecom": [{"system": "email", "value": f"clinops@{stem.lower()}{i}.example.com"}]}]}
        names: set[str] = set()
        for i in range(1, self.n["hospitals"] + 1):
            city, country = CITIES[r.randrange(len(CITIES))]
            for _ in range(20):
                style = r.random()
                if style < 0.45:
                    name = f"{city} {r.choice(HOSPITAL_KINDS)}"
                elif style < 0.8:
                    name = f"{r.choice(SAINTS)} {r.choice(HOSPITAL_KINDS)}, {city}"
                else:
                    name = f"{r.choice(FAMILY)} {r.choice(HOSPITAL_KINDS)}, {city}"
                if name not in names:
                    break
            else:
                name = f"{city} {r.choice(HOSPITAL_KINDS)} {i}"
            names.add(name)
            h = Hospital(f"org-h-{i:05d}", name, city, country, f"loc-{i:05d}")
            self.hospitals.append(h)
            yield {"resourceType": "Organization", "id": h.id, "active": True,
                   "identifier": [{"system": "http://example.org/ctms/institution", "value": f"INST{i:05d}"}],
                   "type": [concept(ORG_TYPE, "prov")], "name": name,
                   "contact": [{"address": {"use": "work", "line": [f"{r.randint(1, 400)} {r.choice(STREETS)}"],
                                            "city": city, "postalCode": f"{r.randint(1000, 9999)}",
                                            "country": country},
                                "telecom": [{"system": "phone", "value": f"+00 {r.randint(100, 999)} "
                                                                         f"{r.randint(100000, 999999)}"}]}]}

    def locations(self) -> Iterator[dict[str, Any]]:
        for i, h in enumerate(self.hospitals, 1):
            yield {"resourceType": "Location", "id": h.loc_id, "status": "active",
                   "identifier": [{"system": "http://example.org/ctms/location", "value": f"LOC{i:05d}"}],
                   "name": f"{h.name} clinical research unit", "mode": "instance",
                   "type": [concept(LOC_TYPE, "OUTPHARM" if i % 17 == 0 else "HOSP")],
                   "address": {"city": h.city, "country": h.country},
                   "managingOrganization": ref("Organization", h.id)}

    # -- studies ---------------------------------------------------------------------------
    def _plan_studies(self) -> None:
        r = self.rng("studies")
        drugs: set[str] = set()
        for i in range(1, self.n["studies"] + 1):
            while True:
                drug = r.choice(DRUG_HEADS) + r.choice(DRUG_MIDS) + r.choice(DRUG_TAILS)
                if drug not in drugs or len(drugs) > 5000:
                    break
            drugs.add(drug)
            phase, ph, _ = r.choices(PHASES, weights=[p[2] for p in PHASES])[0]
            code, cond, pop = r.choice(CONDITIONS)
            template = r.choice(TITLE_TEMPLATES)
            title = template.format(ph=ph, Drug=drug.capitalize(), pop=pop.capitalize() if template.startswith(
                "{pop}") else pop, cond=cond)
            prefix = title[:title.index(drug.capitalize()) + len(drug)]
            start = date(2021, 6, 1) + timedelta(days=r.randrange(1400))
            if start > date(2025, 9, 1):
                status, state = ("draft", "in-review") if r.random() < 0.3 else ("active", "active")
            elif start < date(2023, 1, 1) and r.random() < 0.35:
                status, state = "retired", r.choice(["completed", "completed", "administratively-completed"])
            else:
                status, state = "active", r.choice(["active"] * 6 + ["closed-to-accrual",
                                                                     "temporarily-closed-to-accrual"])
            if status == "retired":
                end = date(2024, 9, 1) + timedelta(days=r.randrange(660))
            elif status == "active":
                end = max(start + timedelta(days=r.randrange(900, 2000)), AS_OF + timedelta(days=r.randrange(60, 900)))
            else:
                end = None
            sponsor = self.sponsors[min(int(r.paretovariate(1.2)) - 1, len(self.sponsors) - 1)
                                    if r.random() < 0.5 else r.randrange(len(self.sponsors))][0]
            acronym = f"{drug[:3].upper()}-{100 + i % 900}"
            self.studies.append(Study(i, f"study-{i:04d}", f"NCT{5_000_000 + i * 37:08d}", acronym, title, prefix,
                                      phase, start, end, status, state, sponsor, (code, cond, pop)))
        # sites: every study gets at least one; phase 3 studies get more
        weights = [{"phase-1": 0.3, "phase-1-phase-2": 0.5, "phase-2": 0.8, "phase-2-phase-3": 1.2, "phase-3": 1.8,
                    "phase-4": 1.0}[s.phase] * r.uniform(0.5, 1.5) for s in self.studies]
        owners = list(range(len(self.studies))) + r.choices(range(len(self.studies)), weights=weights,
                                                            k=self.n["site_studies"] - len(self.studies))
        owners.sort()
        for n, si in enumerate(owners, 1):
            study = self.studies[si]
            taken = {self.sites[x - 1].hospital for x in study.sites}
            h = r.randrange(len(self.hospitals))
            for _ in range(10):
                if h not in taken:
                    break
                h = r.randrange(len(self.hospitals))
            site = Site(n, f"site-{n:06d}", si, f"{study.protocol}-{len(study.sites) + 1:03d}", h,
                        study.start + timedelta(days=r.randrange(30, 240)))
            study.sites.append(n)
            self.sites.append(site)

    def studies_(self) -> Iterator[dict[str, Any]]:
        self._plan_studies()
        r = self.rng("study-resources")
        for s in self.studies:
            sponsor_name = dict(self.sponsors)[s.sponsor]
            code, cond, _ = s.condition
            countries = sorted({self.hospitals[self.sites[x - 1].hospital].country for x in s.sites})
            target = max(20, len(s.sites) * r.choice([8, 10, 12, 15, 20]))
            res: dict[str, Any] = {
                "resourceType": "ResearchStudy", "id": s.id,
                "identifier": [{"use": "official", "type": {"text": "ClinicalTrials.gov"}, "system": NCT,
                                "value": s.nct},
                               {"type": {"text": "Sponsor protocol number"}, "system": SPONSOR_PROTOCOL,
                                "value": s.protocol}],
                "name": s.protocol.replace("-", "_"),
                "title": s.title,
                "label": [{"type": concept("http://hl7.org/fhir/title-type", "acronym"), "value": s.protocol}],
                "status": s.status,
                "primaryPurposeType": concept(PURPOSE, r.choice(PURPOSES)),
                "phase": concept(PHASE, s.phase),
                "condition": [concept(ICD10, code, text=cond)],
                "keyword": [{"text": cond}, {"text": s.title.split(" in ")[0].split()[-1]}],
                "region": [concept(ISO3166, c) for c in countries[:20]],
                "descriptionSummary": f"{s.title}. Sponsored by {sponsor_name}.",
                "period": {"start": d(s.start), **({"end": d(s.end)} if s.end else {})},
                "associatedParty": [{"name": sponsor_name, "role": concept(PARTY_ROLE, "sponsor"),
                                     "party": ref("Organization", s.sponsor)}],
                "progressStatus": [{"state": concept(STUDY_STATUS, "approved"), "actual": True,
                                    "period": {"start": d(s.start - timedelta(days=60))}},
                                   {"state": concept(STUDY_STATUS, s.state), "actual": True,
                                    "period": {"start": d(s.start)}}],
                "recruitment": {"targetNumber": target},
                "comparisonGroup": [{"linkId": "arm-a", "name": "Investigational arm",
                                     "type": concept("http://hl7.org/fhir/research-study-arm-type", "experimental")},
                                    {"linkId": "arm-b", "name": "Control arm",
                                     "type": concept("http://hl7.org/fhir/research-study-arm-type",
                                                     "placebo-comparator")}],
            }
            yield res

    def site_studies(self) -> Iterator[dict[str, Any]]:
        r = self.rng("site-resources")
        for site in self.sites:
            s, h = self.studies[site.study], self.hospitals[site.hospital]
            state = s.state if s.status != "draft" else "in-review"
            if state == "active" and r.random() < 0.08:
                state = "closed-to-accrual"
            yield {"resourceType": "ResearchStudy", "id": site.id,
                   "identifier": [{"system": SITE_NUMBER, "value": site.number}],
                   "title": f"{s.protocol} at {h.name}",
                   "status": "active" if s.status != "draft" else "draft",
                   "partOf": [ref("ResearchStudy", s.id)],
                   "site": [ref("Organization", h.id, h.name), ref("Location", h.loc_id)],
                   "phase": concept(PHASE, s.phase),
                   "region": [concept(ISO3166, h.country)],
                   "period": {"start": d(site.activated)},
                   "recruitment": {"targetNumber": r.choice([5, 8, 10, 12, 15, 20, 25, 30, 40])},
                   "progressStatus": [{"state": concept(STUDY_STATUS, state), "actual": True,
                                       "period": {"start": d(site.activated)}}]}

    # -- patients, subjects, visits -----------------------------------------------------------
    def window(self, site: Site) -> tuple[date, date]:
        """When a site can screen subjects: from its activation (not before ENROL_FROM) to
        ENROL_TO, or for a finished study early enough to complete the protocol before its end."""
        study = self.studies[site.study]
        last = ENROL_TO if study.status != "retired" else min(ENROL_TO, study.end - timedelta(days=400))
        return max(ENROL_FROM, site.activated), last

    def _assign(self) -> list[int]:
        """The site of each patient: recruitment is skewed (a few sites recruit most), only at sites
        with a recruitment window of a month or more (none in draft studies)."""
        r = self.rng("recruitment")
        open_ = [x for x in self.sites if self.studies[x.study].status != "draft"
                 and (self.window(x)[1] - self.window(x)[0]).days >= 30]
        active = open_ or self.sites
        weights = [r.lognormvariate(0, 0.9) for _ in active]
        cum, acc = [], 0.0
        for w in weights:
            acc += w
            cum.append(acc)
        out = [active[bisect.bisect_left(cum, r.random() * acc)].n - 1 for _ in range(self.n["patients"])]
        self.subjects_per_site = [0] * len(self.sites)
        for x in out:
            self.subjects_per_site[x] += 1
        return out

    def people(self, patients: ChunkWriter, subjects: ChunkWriter, encounters: ChunkWriter,
               appointments: ChunkWriter, samples: dict[str, Any]) -> None:
        r = self.rng("people")
        site_of = self._assign()
        seq_in_site = [0] * len(self.sites)
        enc_n = appt_n = 0
        sample_every = max(1, self.n["patients"] // 400)
        for i in range(1, self.n["patients"] + 1):
            site = self.sites[site_of[i - 1]]
            study, h = self.studies[site.study], self.hospitals[site.hospital]
            seq_in_site[site.n - 1] += 1
            female = r.random() < 0.5
            given = r.choice(GIVEN_F if female else GIVEN_M)
            family = r.choice(FAMILY)
            pid, sid = f"pat-{i:06d}", f"subj-{i:06d}"
            mrn_system = f"http://example.org/hospital/{h.id}/mrn"
            mrn = f"MRN{r.randrange(10 ** 7, 10 ** 8)}"
            born = date(1940, 1, 1) + timedelta(days=r.randrange(365 * 65))
            patients.write({
                "resourceType": "Patient", "id": pid,
                "identifier": [{"use": "usual", "type": concept("http://terminology.hl7.org/CodeSystem/v2-0203", "MR"),
                                "system": mrn_system, "value": mrn}],
                "active": True,
                "name": [{"use": "official", "family": family, "given": [given]}],
                "telecom": [{"system": "phone", "value": f"+00 6{r.randrange(10 ** 7, 10 ** 8)}", "use": "mobile"}],
                "gender": "female" if female else "male",
                "birthDate": d(born),
                "address": [{"use": "home", "city": h.city, "country": h.country,
                             "postalCode": f"{r.randint(1000, 9999)}"}],
                "managingOrganization": ref("Organization", h.id),
            })
            # enrolment: not before the site opened; recruitment ramps up over time (more recent subjects)
            earliest, latest = self.window(site)
            if (latest - earliest).days < 30:  # only when no site has a window (a tiny --scale)
                earliest, latest = ENROL_TO - timedelta(days=30), ENROL_TO
            frac = r.random() ** 0.75
            screen = earliest + timedelta(days=int(frac * (latest - earliest).days))
            baseline = screen + timedelta(days=14)
            screen_fail = r.random() < 0.25
            withdraw_after = r.choice([1, 2, 3]) if (not screen_fail and r.random() < 0.12) else None
            subject_code = f"{site.number}-{seq_in_site[site.n - 1]:04d}"
            arm = "arm-a" if r.random() < 0.5 else "arm-b"

            # the visits
            last_visit = screen
            done: list[int] = []
            for k, (vcode, vname, day) in enumerate(VISITS):
                if screen_fail and k > 0:
                    break
                if withdraw_after is not None and k > withdraw_after:
                    break
                when = baseline + timedelta(days=day + (r.randint(-3, 3) if k > 1 else 0))
                if when < AS_OF:
                    missed = k > 1 and r.random() < 0.04
                    if missed:
                        appt_n += 1
                        appointments.write(self._appointment(appt_n, pid, site, h, study, subject_code, k, vcode,
                                                             vname, when, r, "noshow"))
                        continue
                    enc_n += 1
                    encounters.write(self._encounter(enc_n, pid, site, h, subject_code, k, vcode, vname, when, r))
                    done.append(k)
                    last_visit = when
                elif when <= AS_OF + BOOK_AHEAD:
                    appt_n += 1
                    appointments.write(self._appointment(appt_n, pid, site, h, study, subject_code, k, vcode, vname,
                                                         when, r, "cancelled" if r.random() < 0.05 else "booked"))
                else:
                    break
            # the subject
            progress = [{"type": concept(STATE_TYPE, "Enrollment"), "subjectState": concept(SUBJECT_STATE, "screening"),
                         "milestone": concept(MILESTONE, "SignedUpForStudy"), "startDate": d(screen)}]
            period: dict[str, str] = {"start": d(screen)}
            if screen_fail:
                if screen + timedelta(days=14) < AS_OF:
                    progress[0]["endDate"] = d(screen + timedelta(days=14))
                    progress.append({"type": concept(STATE_TYPE, "Enrollment"),
                                     "subjectState": concept(SUBJECT_STATE, "ineligible"),
                                     "startDate": d(screen + timedelta(days=14))})
                    period["end"] = d(screen + timedelta(days=14))
            elif baseline < AS_OF:
                progress[0]["endDate"] = d(baseline)
                progress.append({"type": concept(STATE_TYPE, "Enrollment"),
                                 "subjectState": concept(SUBJECT_STATE, "on-study"),
                                 "milestone": concept(MILESTONE, "Randomized"), "startDate": d(baseline)})
                if withdraw_after is not None and len(done) > withdraw_after:
                    off = last_visit + timedelta(days=r.randint(1, 20))
                    if off < AS_OF:
                        progress[-1]["endDate"] = d(off)
                        progress.append({"type": concept(STATE_TYPE, "Enrollment"),
                                         "subjectState": concept(SUBJECT_STATE, "withdrawn"),
                                         "reason": {"text": r.choice(["Withdrew consent", "Adverse event",
                                                                      "Lost to follow-up", "Investigator decision"])},
                                         "startDate": d(off)})
                        period["end"] = d(off)
                elif len(done) == len(VISITS):
                    progress[-1]["endDate"] = d(last_visit)
                    progress.append({"type": concept(STATE_TYPE, "Enrollment"),
                                     "subjectState": concept(SUBJECT_STATE, "off-study"), "startDate": d(last_visit)})
                    period["end"] = d(last_visit)
            x = r.random()
            status = "active" if x < 0.98 else ("retired" if x < 0.99 else "draft")
            subj = {"resourceType": "ResearchSubject", "id": sid,
                    "identifier": [{"use": "official", "system": SUBJECT_ID, "value": subject_code}],
                    "status": status, "period": period,
                    "study": ref("ResearchStudy", site.id), "subject": ref("Patient", pid),
                    "progress": progress}
            if not screen_fail and baseline < AS_OF:
                subj["assignedComparisonGroup"] = arm
                subj["actualComparisonGroup"] = arm
            subjects.write(subj)
            if i % sample_every == 0:
                samples["patients"].append({"id": pid, "mrn_system": mrn_system, "mrn": mrn,
                                            "subject": sid, "subject_id": subject_code, "site": site.id})

    def _study_ext(self, site: Site) -> list[dict[str, Any]]:
        return [{"url": STUDY_EXT, "valueReference": ref("ResearchStudy", site.id)}]

    def _encounter(self, n: int, pid: str, site: Site, h: Hospital, subject_code: str, k: int, vcode: str,
                   vname: str, when: date, r: random.Random) -> dict[str, Any]:
        start_min = r.randrange(8 * 60, 16 * 60, 15)
        length = r.choice([30, 45, 60, 60, 90, 120, 180, 240])
        x = r.random()
        cls = ("AMB", "ambulatory") if x < 0.85 else (("VR", "virtual") if x < 0.95 else ("HH", "home health"))
        y = r.random()
        status = "completed" if y < 0.96 else ("discontinued" if y < 0.98 else "entered-in-error")
        if when >= AS_OF - timedelta(days=1) and y < 0.5:
            status = "in-progress"
        enc = {"resourceType": "Encounter", "id": f"enc-{n:07d}",
               "extension": self._study_ext(site),
               "identifier": [{"system": VISIT_ID, "value": f"{subject_code}-V{k + 1}"}],
               "status": status,
               "class": [concept(ACT_CODE, cls[0], cls[1])],
               "type": [{"text": vname}],
               "serviceType": [{"concept": concept(VISIT_TYPE, vcode, vname)}],
               "subject": ref("Patient", pid),
               "actualPeriod": {"start": dt(when, start_min)},
               "serviceProvider": ref("Organization", h.id),
               "location": [{"location": ref("Location", h.loc_id)}]}
        if status != "in-progress":
            enc["actualPeriod"]["end"] = dt(when, start_min + length)
            enc["length"] = {"value": length, "unit": "min", "system": "http://unitsofmeasure.org", "code": "min"}
        return enc

    def _appointment(self, n: int, pid: str, site: Site, h: Hospital, study: Study, subject_code: str, k: int,
                     vcode: str, vname: str, when: date, r: random.Random, status: str) -> dict[str, Any]:
        start_min = r.randrange(8 * 60, 16 * 60, 15)
        length = r.choice([30, 60, 60, 90, 120])
        appt = {"resourceType": "Appointment", "id": f"appt-{n:07d}",
                "extension": self._study_ext(site),
                "identifier": [{"system": VISIT_ID, "value": f"{subject_code}-V{k + 1}"}],
                "status": status,
                "class": [concept(ACT_CODE, "AMB", "ambulatory")],
                "serviceType": [{"concept": concept(VISIT_TYPE, vcode, vname)}],
                "appointmentType": concept("http://terminology.hl7.org/CodeSystem/v2-0276",
                                           "ROUTINE" if k < 2 else "FOLLOWUP"),
                "description": f"{study.protocol} {vname}",
                "start": dt(when, start_min), "end": dt(when, start_min + length), "minutesDuration": length,
                "subject": ref("Patient", pid),
                "participant": [{"actor": ref("Patient", pid), "required": True, "status": "accepted"},
                                {"actor": ref("Location", h.loc_id), "required": True, "status": "accepted"}]}
        if status == "cancelled":
            appt["cancellationReason"] = concept(
                "http://terminology.hl7.org/CodeSystem/appointment-cancellation-reason", "pat", "Patient")
        return appt

    # -- samples for the benchmark ---------------------------------------------------------------
    def study_samples(self) -> dict[str, Any]:
        r = self.rng("samples")
        sites = [x for x in self.sites if self.subjects_per_site[x.n - 1] > 0]
        picked = r.sample(sites, min(300, len(sites)))
        studies = [s for s in self.studies if any(self.subjects_per_site[x - 1] for x in s.sites)]
        return {
            "sites": [{"id": x.id, "subjects": self.subjects_per_site[x.n - 1], "study": self.studies[x.study].id}
                      for x in picked],
            "largest_sites": [{"id": x.id, "subjects": self.subjects_per_site[x.n - 1]}
                              for x in sorted(self.sites, key=lambda x: -self.subjects_per_site[x.n - 1])[:5]],
            "studies": [{"id": s.id, "nct": s.nct, "protocol": s.protocol, "title_prefix": s.title_prefix,
                         "subjects": sum(self.subjects_per_site[x - 1] for x in s.sites)}
                        for s in r.sample(studies, min(200, len(studies)))],
        }


def validate_samples(out: Path, files: dict[str, list[Path]], per_kind: int, seed: int) -> dict[str, Any]:
    """Run resources of every kind through the server's validation and index extraction."""
    sys.path.insert(0, str(ROOT))
    from fhir_ctms.resources.validate import validate_resource
    from fhir_ctms.search.index import index_rows
    r = random.Random(seed)
    report: dict[str, Any] = {}
    for kind, paths in files.items():
        lines: list[bytes] = []
        with paths[0].open("rb") as fh:
            lines += [ln for _, ln in zip(range(per_kind), fh)]
        last = paths[-1].read_bytes().splitlines()
        lines += r.sample(last, min(per_kind, len(last)))
        kinds: dict[str, int] = {}
        rows = 0
        for ln in lines:
            res = orjson.loads(ln)
            validate_resource(json.loads(ln))  # raises Unprocessable (422) with every issue
            rows += len(index_rows(res))
            kinds[res["resourceType"]] = kinds.get(res["resourceType"], 0) + 1
        report[kind] = {"validated": len(lines), "types": kinds, "index_rows_per_resource": round(rows / len(lines), 1)}
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="1.0 = about 1.1 million resources (default 1.0)")
    ap.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    ap.add_argument("--out", type=Path, required=True, help="output directory (created; old *.ndjson are removed)")
    ap.add_argument("--chunk", type=int, default=10_000, help="lines per NDJSON file (default 10,000)")
    ap.add_argument("--validate", type=int, default=20, metavar="N",
                    help="validate the first N and N random resources of each kind (default 20; 0: skip)")
    args = ap.parse_args()
    t0 = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("*.ndjson"):
        old.unlink()
    g = Generator(args.seed, args.scale)
    writers = {name: ChunkWriter(args.out, name, args.chunk) for name in (
        "01-organizations", "02-locations", "03-studies", "04-site-studies", "05-patients", "06-research-subjects",
        "07-encounters", "08-appointments")}
    samples: dict[str, Any] = {"patients": []}
    for res in g.organizations():
        writers["01-organizations"].write(res)
    for res in g.locations():
        writers["02-locations"].write(res)
    for res in g.studies_():
        writers["03-studies"].write(res)
    for res in g.site_studies():
        writers["04-site-studies"].write(res)
    g.people(writers["05-patients"], writers["06-research-subjects"], writers["07-encounters"],
             writers["08-appointments"], samples)
    for w in writers.values():
        w.close()
    samples.update(g.study_samples())
    samples["months"] = sorted({f"{y}-{m:02d}" for y in (2024, 2025, 2026) for m in range(1, 13)
                                if date(y, m, 1) < AS_OF})
    samples["as_of"] = d(AS_OF)
    samples["systems"] = {"nct": NCT, "subject_id": SUBJECT_ID, "site_number": SITE_NUMBER, "visit_id": VISIT_ID,
                          "visit_type": VISIT_TYPE}
    files = {name: w.files for name, w in writers.items() if w.files}
    manifest: dict[str, Any] = {
        "generator": "bench/generate_ctms.py", "version": GENERATOR_VERSION, "seed": args.seed, "scale": args.scale,
        "chunk": args.chunk, "as_of": d(AS_OF),
        "counts": {name: w.total for name, w in writers.items()},
        "total": sum(w.total for w in writers.values()),
        "files": [], "seconds": None,
    }
    for name, paths in files.items():
        for p in paths:
            data = p.read_bytes()
            manifest["files"].append({"name": p.name, "lines": data.count(b"\n"), "bytes": len(data),
                                      "sha256": hashlib.sha256(data).hexdigest()})
    manifest["bytes"] = sum(f["bytes"] for f in manifest["files"])
    if args.validate > 0:
        manifest["validation"] = validate_samples(args.out, files, args.validate, args.seed)
    manifest["seconds"] = round(time.monotonic() - t0, 1)
    (args.out / "samples.json").write_text(json.dumps(samples, indent=1))
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(f"{manifest['total']:,} resources in {len(manifest['files'])} files ({manifest['bytes'] / 1e6:,.1f} MB) "
          f"in {manifest['seconds']} s: " + ", ".join(f"{k} {v:,}" for k, v in manifest["counts"].items()))
    if args.validate > 0:
        print("validated: " + ", ".join(f"{k} {v['validated']} ({v['index_rows_per_resource']} index rows each)"
                                        for k, v in manifest["validation"].items()))
    print(f"load: FHIR_CTMS_DATABASE_URL=... .venv/bin/fhir-ctms import {args.out}/*.ndjson")


if __name__ == "__main__":
    main()
