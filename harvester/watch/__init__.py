"""`harvester watch`, the live sidecar: documents sent as they settle while the task runs.

- `settle`: the settle rule, pure (`Settler`: changes and looks in, written documents out).
- `events`: watchfiles' change events on a queue, polling and the fallback to it (the only
  importer of watchfiles).
- `live`: one watch (`Sidecar`): the first full pass, the following, the final pass, the report;
  hashing and uploading through `pipeline`, keruta-api through `wire`.
"""
