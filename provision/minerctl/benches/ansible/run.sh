#!/usr/bin/env bash
# The Ansible side of the provision bench: ansible-playbook with base.yml (the original
# site.yml's base section, written from /work/shared/reference/chutes-miner.md §2.3) on the
# hosts of an INI inventory. ansible-core comes from PyPI into a virtual environment under
# target/ the first time.
#
#   run.sh INVENTORY.ini FORKS
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=${ANSIBLE_VENV:-$here/../../../../target/ansible-venv}
if [ ! -x "$venv/bin/ansible-playbook" ]; then
    /usr/bin/python3 -m venv "$venv" >&2
    "$venv/bin/pip" install -q 'ansible-core>=2.16,<2.19' >&2
fi
export ANSIBLE_NOCOLOR=1 ANSIBLE_RETRY_FILES_ENABLED=0 ANSIBLE_LOCAL_TEMP="${TMPDIR:-/tmp}/ansible-local"
exec "$venv/bin/ansible-playbook" -i "$1" -f "$2" "$here/base.yml"
