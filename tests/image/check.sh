#!/usr/bin/env bash
# `make image-test`: builds the Dockerfile on a Debian base made here (base.sh) and checks the
# image as a cluster runs it: as uid 10001, read-only root, no capabilities, no-new-privileges,
# the documents folder mounted read-only. Needs podman and mmdebstrap (.ci/run installs them)
# and the project's virtualenv, whose dev-api is the keruta-api the harvests inside talk to.
#
# The base and the image carry this host's CA store (see base.sh): both stay in a podman storage
# of their own under the cache folder, named localhost/..., and are never pushed.
#
# Prints one line per check and closes with "N passed, N failed"; exits 1 if any failed.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cache=${KERUTA_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/keruta-harvester/image}
venv=${VENV:-$root/.venv}
image=localhost/keruta-harvester:test
docs=$root/examples/doc
started=$SECONDS

# --- podman as this machine needs it, from files of our own (no system file is edited) --------
# runc: crun refuses this machine's cgroup layout. cgroupfs: there is no systemd to ask.
# default_ulimits: podman's defaults ask for more open files and processes than the hard limits
# allow, and the runtime is refused. Processes: podman, unable to raise its own limit to its
# default, lowers it to 32768 (containers/common), and a container can have no more than podman.
# A CONTAINERS_CONF or CONTAINERS_STORAGE_CONF already set is used as it is.
mkdir -p "$cache/podman"
if [ -z "${CONTAINERS_CONF:-}" ]; then
    files=$(ulimit -Hn)
    processes=$(ulimit -Hu)
    [ "$files" = unlimited ] && files=1048576
    [ "$processes" = unlimited ] || [ "$processes" -gt 32768 ] && processes=32768
    cat > "$cache/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$files:$files", "nproc=$processes:$processes"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
    export CONTAINERS_CONF=$cache/containers.conf
fi
# A storage of its own: removing the cache folder is a cold start, and nothing else's images mix
# with these.
own_storage=
if [ -z "${CONTAINERS_STORAGE_CONF:-}" ]; then
    own_storage=1
    cat > "$cache/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$cache/podman/storage"
runroot = "$cache/podman/run"
EOF
    export CONTAINERS_STORAGE_CONF=$cache/storage.conf
fi

# --- the base: made once per recipe and CA store, then imported from the cached tarball --------
key=$(cat "$root/tests/image/base.sh" /etc/ssl/certs/ca-certificates.crt | sha256sum | cut -c1-16)
base=localhost/keruta-harvester-test-base:$key
tarball=$cache/base-$key.tar
if ! podman image exists "$base"; then
    if [ ! -f "$tarball" ]; then
        echo "image-test: making the bookworm base with mmdebstrap (about a minute)"
        rm -f "$cache"/base-*.tar
        "$root/tests/image/base.sh" "$tarball.part"
        mv "$tarball.part" "$tarball"
    fi
    # A new base: what was built on an older one is of no more use (in our own storage only).
    [ -z "$own_storage" ] || podman rmi --all --force > /dev/null
    podman import --quiet "$tarball" "$base" > /dev/null
fi
based=$SECONDS

# --- the image, from the Dockerfile as it is -------------------------------------------------
# Layers are cached (a run with nothing changed builds nothing); the image this replaces is
# removed, and with it its own layers, so the storage does not grow with every change.
previous=$(podman image inspect --format '{{.Id}}' "$image" 2> /dev/null || true)
if ! podman build --pull=never --build-arg "BASE_IMAGE=$base" --tag "$image" "$root" \
    > "$cache/build.log" 2>&1; then
    cat "$cache/build.log"
    echo "image-test: the build failed (above)"
    exit 1
fi
if [ -n "$previous" ] && [ "$previous" != "$(podman image inspect --format '{{.Id}}' "$image")" ]; then
    podman rmi "$previous" > /dev/null 2>&1 || true
fi
built=$SECONDS

# --- the checks ------------------------------------------------------------------------------
passed=0
failed=0
out=$(mktemp)
pids=()
containers=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2> /dev/null || true; done
    for name in "${containers[@]}"; do podman rm --force --ignore "$name" > /dev/null || true; done
    rm -f "$out" "${out}".*
}
trap cleanup EXIT

ok() {
    passed=$((passed + 1))
    echo "ok    $1"
}
fail() {
    failed=$((failed + 1))
    echo "FAIL  $1"
    sed 's/^/      /' "$out"
}
# check DESCRIPTION COMMAND...: the command's exit status decides; its output shows on failure.
check() {
    local description=$1
    shift
    if "$@" > "$out" 2>&1; then ok "$description"; else fail "$description"; fi
}

# How the cleanup Job runs the image (deploy/cleanup-job.yaml): its user, a read-only root with
# only the /tmp emptyDir writable, no capabilities, no privilege escalation, the documents
# read-only at /.keruta/doc.
job=(--user 10001:10001 --tmpfs "/tmp:rw,size=64m" --cap-drop=ALL
    --security-opt=no-new-privileges --volume "$docs:/.keruta/doc:ro")
read_only=(--read-only --read-only-tmpfs=false)

# in_image EXPECTED RUN-ARGUMENTS...: `podman run` exits 0 and its output holds EXPECTED (a
# grep pattern).
in_image() {
    local expected=$1 code=0
    shift
    podman run --rm "$@" > "$out.run" 2>&1 || code=$?
    cat "$out.run"
    if [ "$code" != 0 ]; then
        echo "(exit $code)"
        return 1
    fi
    grep -q -- "$expected" "$out.run" || {
        echo "expected: $expected"
        return 1
    }
}

# shellcheck disable=SC2016 # expanded in the container
check "the image's own user is 10001:10001 (not root)" \
    in_image '^10001 10001$' --network none "$image" sh -c 'echo "$(id -u) $(id -g)"'
check "the image has a command: a bare run shows harvester --help" \
    in_image 'Usage: harvester' "${job[@]}" "${read_only[@]}" --network none "$image"
check "harvester --help, as the Job runs it, without a network" \
    in_image 'Usage: harvester' "${job[@]}" "${read_only[@]}" --network none "$image" harvester --help
check "keruta-agent cleanup --dry-run plans examples/doc without a network" \
    in_image '6 documents to upload' "${job[@]}" "${read_only[@]}" --network none "$image" \
    keruta-agent cleanup --dry-run --task-id 123 --api-url http://keruta-api:8080
tests_python=$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
check "the image's Python is the tests' Python ($tests_python)" \
    in_image "^Python $tests_python\." --network none "$image" python3 --version

# dev-api on the host's loopback; the container shares the host's network to reach it (a
# published port goes the other way). Its token reaches the container by name only.
KERUTA_API_TOKEN=image-test-$RANDOM$RANDOM$RANDOM
export KERUTA_API_TOKEN
# start_dev_api [FLAGS...]: starts dev-api on a free port; sets api_url.
start_dev_api() {
    local log
    log=$(mktemp "$out.api.XXXX")
    "$venv/bin/harvester" dev-api --port 0 "$@" > "$log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do
        api_url=$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$log" | head -1) && return 0
        sleep 0.1
    done
    cat "$log"
    return 1
}
# received TASK_ID: keruta-api holds every visible file of examples/doc once and the task is
# COMPLETED.
received() {
    "$venv/bin/python" - "$api_url" "$1" "$docs" <<'EOF'
import hashlib, json, os, sys, urllib.request
from pathlib import Path

api_url, task_id, docs = sys.argv[1], sys.argv[2], Path(sys.argv[3])
def get(path: str) -> object:
    request = urllib.request.Request(api_url + path)
    request.add_header("Authorization", "Bearer " + os.environ["KERUTA_API_TOKEN"])
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)
listing = get(f"/api/tasks/{task_id}/documents")
documents = listing["documents"] if isinstance(listing, dict) else listing
task = get(f"/api/v1/tasks/{task_id}")
files = {hashlib.sha256(f.read_bytes()).hexdigest() for f in docs.rglob("*")
         if f.is_file() and not f.name.startswith(".")}
got = sorted(d["sha256"] for d in documents)
print(f"received {len(got)} documents, task {task['status']}")
sys.exit(0 if got == sorted(files) and task["status"] == "COMPLETED" else 1)
EOF
}

start_dev_api
harvest=(keruta-agent cleanup --task-id 123 --api-url "$api_url" --keep-pvc)
check "a harvest inside the image uploads examples/doc to dev-api and exits 0" \
    in_image 'status update *done' "${job[@]}" "${read_only[@]}" --network host --env KERUTA_API_TOKEN \
    "$image" "${harvest[@]}"
check "dev-api received each document once, the task COMPLETED" received 123
if grep -qF "$KERUTA_API_TOKEN" "$out.run"; then
    cp "$out.run" "$out"
    fail "the token never in the harvest's output"
else
    ok "the token never in the harvest's output"
fi

# Nothing written inside the image: the same harvest on a writable root changes nothing more
# than podman itself does for a container that runs `true` (the mount points it makes).
writer=keruta-image-test-$$-writes
baseline=keruta-image-test-$$-baseline
containers+=("$writer" "$baseline")
writes() {
    podman run --name "$baseline" "${job[@]}" --network host "$image" true
    podman run --name "$writer" "${job[@]}" --network host \
        --env KERUTA_API_TOKEN "$image" "${harvest[@]}"
    podman diff "$baseline" | sort > "$out.podman"
    podman diff "$writer" | sort > "$out.diff"
    diff --label 'podman itself' --label 'the harvest' -u "$out.podman" "$out.diff" \
        > "$out.written" && return
    head -n 30 "$out.written"
    echo "($(grep -c '^+[AC]' "$out.written") paths written in all)"
    return 1
}
check "a harvest on a writable root writes nothing inside the image (podman diff)" writes

# SIGTERM: a container stop during a slow harvest ends it with exit 3 and the summary.
start_dev_api --latency 5
stopped=keruta-image-test-$$-sigterm
containers+=("$stopped")
stops() {
    podman run --detach --name "$stopped" "${job[@]}" "${read_only[@]}" --network host \
        --env KERUTA_API_TOKEN "$image" keruta-agent cleanup --task-id 124 \
        --api-url "$api_url" --keep-pvc > /dev/null
    for _ in $(seq 60); do
        podman logs "$stopped" > "$out.logs" 2>&1
        grep -q '^upload:' "$out.logs" && break
        sleep 0.5
    done
    podman stop --time 30 "$stopped" > /dev/null
    code=$(podman wait "$stopped")
    podman logs "$stopped" > "$out.logs" 2>&1
    cat "$out.logs"
    echo "(exit $code)"
    [ "$code" = 3 ] && grep -q 'interrupted' "$out.logs" && grep -q '^not attempted' "$out.logs"
}
check "podman stop during a slow harvest: exit 3, the summary printed" stops

size=$(podman image inspect --format '{{.Size}}' "$image")
base_size=$(podman image inspect --format '{{.Size}}' "$base")
echo "image-test: $image is $((size / 1000000)) MB ($((base_size / 1000000)) MB of it the base);" \
    "base $((based - started)) s, build $((built - based)) s, checks $((SECONDS - built)) s"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
