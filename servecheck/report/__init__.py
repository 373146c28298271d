"""Stage 5, the report: the verdict for people and for machines (terminal table, JSON summary,
JUnit XML, HTML pages)."""
