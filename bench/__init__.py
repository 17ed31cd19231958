"""Reproducible benchmarks of keruta-harvester (issue 4): `python -m bench`, `make bench`.

Takes nothing but the installed `harvester` CLI (and, when present, `wrk` and `curl`); gives a
table and a JSON document comparing the harvester with the server's ceiling (measured by C
clients) and with the old agent's sequential algorithm. See bench/README.md.

Modules: `data` writes the trees, `server` runs the dev-api as its own process, `contenders`
runs each client, `sequential` is the old agent's algorithm, `scenarios` interleaves the runs,
`results` holds what was found, `report` prints it, `tools` runs and times child processes.
"""
