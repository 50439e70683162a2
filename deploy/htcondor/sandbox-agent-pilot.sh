#!/bin/sh
# sandbox-agent-pilot.sh: an HTCondor job that is one sandbox-agent pilot.
# deploy/htcondor/pilot.sub submits it; docs/deploying.md, "Under HTCondor", says how.
#
# The site tells it, in the job's environment (the submit file's `environment`):
#   SANDBOX_AGENT_VENV     the virtual environment the wheel is installed in
#                          [/opt/sandbox-agent]
#   SANDBOX_AGENT_POLICY   the site policy [/etc/sandbox-agent/site.toml if it exists,
#                          else the shipped default]
#   SANDBOX_AGENT_TTL      the most seconds the pilot offers jobs [86400]; the job ad's
#                          AllowedJobDuration, AllowedExecuteDuration or BatchRuntime
#                          (HTCondor-CE's maxWallTime) lower it, less SANDBOX_AGENT_TTL_MARGIN
#   SANDBOX_AGENT_TTL_MARGIN  seconds kept back from the job ad's limit for the pilot's
#                          own stop and reports [600]
#   SANDBOX_AGENT_BROKER, SANDBOX_AGENT_CERT, SANDBOX_AGENT_KEY, SANDBOX_AGENT_CA
#                          a broker and this pilot's token (docs/operations.md); a
#                          relative name is a file the job brought into its scratch
#                          directory. Unset: the embedded queue in the scratch directory.
# Its arguments go to `sandbox-agent run` as they are (--json, --max-jobs N, ...).
#
# What it does: the pilot's home is $_CONDOR_SCRATCH_DIR/sandbox-agent (HTCondor removes
# it with the job); `sandbox-agent doctor` checks the node first, its report in the
# job's output; then the script becomes the pilot (exec), so HTCondor's SIGTERM on
# removal or eviction reaches the pilot, which hands its job back and exits 0.
#
# Exit status: the pilot's (0 nothing left to do or the time is used up, 3 this node
# cannot run jobs); 3 with one line on stderr when doctor says this node cannot run
# jobs; 2 with one line on stderr when a setting above is wrong.
set -eu

me=sandbox-agent-pilot
say() { printf '%s: %s\n' "$me" "$*" >&2; }

scratch=${_CONDOR_SCRATCH_DIR:-}
if [ -z "$scratch" ] || [ ! -d "$scratch" ]; then
    say "_CONDOR_SCRATCH_DIR names no directory: this script is an HTCondor job's executable"
    exit 2
fi
cd "$scratch"

venv=${SANDBOX_AGENT_VENV:-/opt/sandbox-agent}
agent=$venv/bin/sandbox-agent
if [ ! -x "$agent" ]; then
    say "$agent is not an executable: set SANDBOX_AGENT_VENV to the virtual environment the sandbox-agent wheel is installed in"
    exit 2
fi

if [ -n "${SANDBOX_AGENT_POLICY:-}" ]; then
    policy=$SANDBOX_AGENT_POLICY
elif [ -e /etc/sandbox-agent/site.toml ]; then
    policy=/etc/sandbox-agent/site.toml
else
    policy=default
fi

number() {  # $1 is a whole number of seconds
    case $1 in '' | *[!0-9]*) return 1 ;; esac
}

ttl=${SANDBOX_AGENT_TTL:-86400}
margin=${SANDBOX_AGENT_TTL_MARGIN:-600}
if ! number "$ttl"; then
    say "SANDBOX_AGENT_TTL=$ttl is not a number of seconds"
    exit 2
fi
if ! number "$margin"; then
    say "SANDBOX_AGENT_TTL_MARGIN=$margin is not a number of seconds"
    exit 2
fi
# The job ad's time limits, literal integers only ("Name = 123" lines; nothing there is
# evaluated): the pilot offers no job more time than the batch system gives it.
limit=
if [ -n "${_CONDOR_JOB_AD:-}" ] && [ -r "$_CONDOR_JOB_AD" ]; then
    limit=$(sed -n -e 's/^AllowedJobDuration = \([0-9][0-9]*\)$/\1/p' \
        -e 's/^AllowedExecuteDuration = \([0-9][0-9]*\)$/\1/p' \
        -e 's/^BatchRuntime = \([0-9][0-9]*\)$/\1/p' "$_CONDOR_JOB_AD" | sort -n | head -n 1)
fi
if [ -n "$limit" ]; then
    if [ "$limit" -le $((margin + 60)) ]; then
        say "the job ad gives this pilot $limit s, no more than the $margin s kept back for its stop and a minute: no time for a job"
        exit 3
    fi
    if [ $((limit - margin)) -lt "$ttl" ]; then
        ttl=$((limit - margin))
    fi
fi

# A key the job brought with it: HTCondor's transfer need not keep its mode, and the
# pilot refuses a key others can read.
case ${SANDBOX_AGENT_KEY:-/} in
    /*) ;;
    *) [ ! -f "$SANDBOX_AGENT_KEY" ] || chmod go= "$SANDBOX_AGENT_KEY" ;;
esac

# cgroup v2, a cgroup delegated to this account: step into the leaf the pilot moves
# itself into first thing (sandbox-agent-agent, docs/operations.md), so that doctor
# sees the cgroup as the pilot will have it, with no process but the pilot's in it
# (this shell would be one). Anything else is left as it is: doctor says what is wrong.
enter_leaf() {
    [ "$(id -u)" -ne 0 ] || return 0
    [ -r /proc/self/mountinfo ] && [ -r /proc/self/cgroup ] || return 0
    if grep -q ' - cgroup ' /proc/self/mountinfo; then
        return 0 # v1 controllers: the pilot places jobs per controller there
    fi
    mount=$(sed -n 's/^[^ ]* [^ ]* [^ ]* [^ ]* \([^ ]*\) .* - cgroup2 .*$/\1/p' /proc/self/mountinfo | head -n 1)
    own=$(sed -n 's/^0::\(\/.*\)$/\1/p' /proc/self/cgroup)
    [ -n "$mount" ] && [ -n "$own" ] && [ "$own" != / ] || return 0
    dir=$mount$own
    case $dir in */sandbox-agent-agent) return 0 ;; esac
    [ -e "$dir/cgroup.type" ] && [ -w "$dir" ] && [ -w "$dir/cgroup.procs" ] || return 0
    { mkdir -p "$dir/sandbox-agent-agent" && echo $$ >"$dir/sandbox-agent-agent/cgroup.procs"; } 2>/dev/null || true
}
enter_leaf

home=$scratch/sandbox-agent
mkdir -p "$home"
chmod 700 "$home"

report=$home/doctor.txt
if "$agent" --home "$home" doctor --policy "$policy" >"$report" 2>&1; then
    cat "$report"
else
    status=$?
    cat "$report"
    if [ "$status" -eq 3 ]; then
        say "this node cannot run sandbox-agent jobs: $(tail -n 1 "$report")"
    else
        say "sandbox-agent doctor failed (exit $status): $(tail -n 1 "$report")"
    fi
    exit "$status"
fi

exec "$agent" --home "$home" run --policy "$policy" --ttl "$ttl" "$@"
