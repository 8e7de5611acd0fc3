#!/usr/bin/env bash
# The reference's name for the launcher: `bash mim_dist_train.sh CONFIG PRETRAINED GPUS [key=value ...]`.
# It ran `mim train mmseg ...` (OpenMIM); this project needs no mim, so it is dist_train.sh under its old name,
# with the same arguments (work dir: CONFIG's path under work_dirs/ plus PRETRAINED's name).
exec bash "$(dirname "${BASH_SOURCE[0]}")/dist_train.sh" "$@"
