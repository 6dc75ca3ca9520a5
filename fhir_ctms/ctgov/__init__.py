"""ClinicalTrials.gov API v2 study records and the CTMS model (profiles/README.md), both ways.

- :mod:`.to_fhir`: a record (``{"protocolSection": {...}}``) as the study, its countries and sites
  with their Organizations and Locations, and one transaction Bundle (``fhir-ctms import
  --clinicaltrials-gov``);
- :mod:`.from_fhir`: the stored resources back to a record (``ResearchStudy/[id]/$registry-export``);
- :mod:`.fields`: which fields are carried both ways and which are not, and why;
- :mod:`.codes`, :mod:`.countries`: the code systems and value maps, country names to ISO 3166.

Framework-free: no storage, no HTTP.
"""

from .fields import MAPPED, UNMAPPED, carried, not_carried
from .from_fhir import to_record
from .to_fhir import Conversion, NotARecord, convert, study_id

__all__ = ["MAPPED", "UNMAPPED", "Conversion", "NotARecord", "carried", "convert", "not_carried",
           "study_id", "to_record"]
