"""Reproducible benchmarks of keruta-harvester (issues 4 and 13): `python -m bench`, `make bench`.

Takes nothing but the installed `harvester` CLI (and, when present, `wrk` and `curl`); gives a
table and a JSON document comparing the harvester with the server's ceiling (measured by C
clients, on dev-api and on a minimal independent server) and with the old agent's sequential
algorithm. See bench/README.md.

Modules: `data` writes the trees, `server` runs dev-api or `fast_server` (the minimal
independent keruta-api) as its own process, `contenders`
runs each client, `sequential` is the old agent's algorithm, `scenarios` interleaves the runs,
`results` holds what was found, `report` prints it, `tools` runs and times child processes.
"""
