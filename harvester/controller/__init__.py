"""`harvester controller`: starts the cleanup Job when a keruta main Job succeeds, never when it
fails. `decide` and `render` are pure functions over plain data; `loop` wires them to the
Kubernetes watch and actions of `harvester.kube.jobs`."""
