"""CTMS domain logic, free of the web framework and of the database.

Plain functions over resource JSON (dicts), so each is testable without a server:

- ``subjects``: a ResearchSubject's state and dates, per the state table of
  ``profiles/README.md`` ("Subjects");
- ``enrollment``: enrolment counts and rates per study, country and site;
- ``forecast``: the Poisson-gamma recruitment model (Anisimov and Fedorov 2007);
- ``tree``: a study's countries, sites and subjects, the one module here that reads: through
  searches on a session its caller gives (``$enrollment``, ``$milestones``, ``$payments``).
"""
