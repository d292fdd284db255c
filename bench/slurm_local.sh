#!/bin/bash
# A one-node SLURM cluster on this machine (Debian's slurm-wlm and munge), the micro study launched through it from
# a shell WITHOUT the virtualenv (`vlscale study launch --backend slurm --submit`), and its results.csv compared
# with a local run of the same study started the same way.
#
#   sudo bench/slurm_local.sh [WORKDIR]        (root: it installs packages with apt-get and starts the daemons)
#
# Needs the repo's .venv (make setup). The daemons it starts (munged, slurmctld, slurmd) are stopped at the end by
# their process ids; /etc/slurm/slurm.conf and /etc/munge/munge.key are written if missing or ours.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
VLSCALE="$REPO/.venv/bin/vlscale"
WORK=$(realpath -m "${1:-/tmp/vlscale-slurm-local}")
[ -x "$VLSCALE" ] || { echo "no $VLSCALE: run make setup first" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "run as root (apt-get, daemons)" >&2; exit 2; }
rm -rf "$WORK"
mkdir -p "$WORK/slurm/state" "$WORK/slurm/spool"

echo "== installing slurm-wlm and munge"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q slurm-wlm munge > "$WORK/apt.log" 2>&1 || { tail -5 "$WORK/apt.log"; exit 1; }
dpkg-query -W slurm-wlm munge

STARTED=()
cleanup() {
  for pid in "${STARTED[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

echo "== munge"
mkdir -p /etc/munge /run/munge /var/log/munge /var/lib/munge
[ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
chown -R munge: /etc/munge /run/munge /var/log/munge /var/lib/munge
chmod 400 /etc/munge/munge.key
if ! pgrep -x munged > /dev/null; then
  rm -f /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 30); do [ -s /run/munge/munged.pid ] && break; sleep 1; done
  STARTED+=("$(cat /run/munge/munged.pid)")
fi
munge -n | unmunge | grep -q "STATUS:.*Success"

echo "== slurm (one node: $(hostname -s), $(nproc) CPUs)"
HOST=$(hostname -s)
MEM=$(( $(free -m | awk '/^Mem:/ {print $2}') * 3 / 4 ))
mkdir -p /etc/slurm
cat > /etc/slurm/slurm.conf <<EOF
# written by vlscale bench/slurm_local.sh
ClusterName=vlscale-local
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$WORK/slurm/state
SlurmdSpoolDir=$WORK/slurm/spool
SlurmctldPidFile=$WORK/slurm/slurmctld.pid
SlurmdPidFile=$WORK/slurm/slurmd.pid
SlurmctldLogFile=$WORK/slurm/slurmctld.log
SlurmdLogFile=$WORK/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
NodeName=$HOST CPUs=$(nproc) RealMemory=$MEM State=UNKNOWN
PartitionName=local Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
/usr/sbin/slurmctld -c
/usr/sbin/slurmd
for _ in $(seq 60); do
  [ -s "$WORK/slurm/slurmctld.pid" ] && [ -s "$WORK/slurm/slurmd.pid" ] && break
  sleep 1
done
STARTED+=("$(cat "$WORK/slurm/slurmctld.pid")" "$(cat "$WORK/slurm/slurmd.pid")")
for _ in $(seq 60); do
  sinfo -h -o %T | grep -q idle && break
  sleep 1
done
sinfo

# A shell without the virtualenv: no VIRTUAL_ENV, no .venv/bin on PATH, only HOME and the system PATH.
BARE=(env -i "HOME=$HOME" "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" "LANG=C.UTF-8")
echo "== launch from a bare shell: $(${BARE[@]} bash -c 'command -v vlscale || echo "no vlscale on PATH"')"
cd "$WORK"
"${BARE[@]}" "$VLSCALE" study launch --config micro_shapes --dir "$WORK/slurm_study" --backend slurm --submit \
  --time 30 --cpus-per-task 1 --mem 3G
grep -h "SBATCH --\(time\|cpus\|mem\)\|srun\|study collect" "$WORK/slurm_study/launch/stage0.sbatch" \
  "$WORK/slurm_study/launch/collect.sbatch"

echo "== local run of the same study from a bare shell (meanwhile)"
t0=$(date +%s)
"${BARE[@]}" "$VLSCALE" study --config micro_shapes --dir "$WORK/local_study" > "$WORK/local.log" 2>&1 \
  || { tail -5 "$WORK/local.log"; exit 1; }
echo "local study: $(( $(date +%s) - t0 )) s"

echo "== waiting for the SLURM jobs"
for _ in $(seq 720); do
  [ -z "$(squeue -h)" ] && break
  sleep 5
done
squeue
echo "== vlscale study status (bare shell)"
"${BARE[@]}" "$VLSCALE" study status "$WORK/slurm_study" || true
echo "== job logs (last lines)"
for f in "$WORK"/slurm_study/launch/logs/*.out; do echo "$(basename "$f"): $(grep -v '^\s*$' "$f" | tail -1)"; done

echo "== results.csv: SLURM vs local"
ls -l "$WORK/slurm_study/results.csv" "$WORK/local_study/results.csv"
if cmp "$WORK/slurm_study/results.csv" "$WORK/local_study/results.csv"; then
  echo "results.csv byte-identical ($(wc -l < "$WORK/local_study/results.csv") lines)"
else
  diff "$WORK/slurm_study/results.csv" "$WORK/local_study/results.csv" | head -20
  exit 1
fi
ls "$WORK/slurm_study/report.md" "$WORK/local_study/report.md"
