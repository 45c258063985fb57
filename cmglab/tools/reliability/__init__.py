"""The reliability campaign (issue 10): hostile inputs against a running lab, counted.

`python -m cmglab.tools.reliability --out reliability/results [--budget SECONDS]` starts an isolated lab,
fuzzes each service's published OpenAPI with schemathesis (`fuzz`), sends the hand-made corpus of
what OpenAPI cannot describe (`corpus`), then reads what the services recorded (`labview`) and checks
the site and directory databases (`invariants`), and writes `report.json` + `report.md` (`report`).
`matrix` holds the authorization matrix the tests execute and the README shows.
"""
