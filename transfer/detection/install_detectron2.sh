#!/usr/bin/env bash
# Install detectron2 0.6 (upstream commit 02b5c4e, 2026-06) into the current Python environment.
#
#   bash transfer/detection/install_detectron2.sh [SOURCE]
#
# SOURCE: a detectron2 source folder, a .tar.gz of one, or a git URL with an optional @REV
# (default: the upstream repository at the pinned commit). The source is copied to a temporary folder
# and its setup.py adjusted there, never in place.
#
# Build: the full package with its C++/CUDA ops (detectron2._C) where torch sees a GPU and a CUDA
# toolchain (detectron2's own rule) or FORCE_CUDA=1; elsewhere the pure-Python package, which trains and
# evaluates Mask R-CNN R50-FPN (torchvision's roi_align and nms serve) but has no deformable
# convolution, rotated boxes or fast COCO evaluator. D2_BUILD=full|python overrides the choice.
# The pinned commit works with today's numpy and Pillow; the 2021 v0.6 tag needs numpy < 1.24, Pillow < 10.
#
# Environment: PYTHON (default: python), D2_BUILD, FORCE_CUDA.
set -euo pipefail

UPSTREAM=https://github.com/facebookresearch/detectron2.git
COMMIT=02b5c4e295e990042a714712c21dc79b731e8833
SOURCE=${1:-$UPSTREAM@$COMMIT}
PYTHON=${PYTHON:-python}
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

die() { echo "install_detectron2.sh: $*" >&2; exit 1; }

if [[ $# -gt 1 ]]; then
    echo "usage: $0 [SOURCE]   (a detectron2 folder, a .tar.gz of one, or a git URL[@REV])" >&2
    exit 2
fi
"$PYTHON" -c "import torch" 2>/dev/null || die "$PYTHON cannot import torch: install requirements.txt first"
PYTHON=$("$PYTHON" -c "import sys; print(sys.executable)")  # absolute: the check below runs elsewhere

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --- 1. the source, as a folder we may edit
if [[ -d "$SOURCE" ]]; then
    cp -r "$SOURCE" "$work/src"
elif [[ -f "$SOURCE" ]]; then
    mkdir "$work/unpacked"
    tar -xf "$SOURCE" -C "$work/unpacked" 2>/dev/null || die "$SOURCE: not a readable tar archive"
    setup=$(find "$work/unpacked" -maxdepth 2 -name setup.py | head -n 1)
    [[ -n "$setup" ]] || die "$SOURCE: no setup.py at its top level"
    mv "$(dirname "$setup")" "$work/src"
elif [[ "$SOURCE" == *://* ]]; then
    url=${SOURCE#git+}
    rev=
    if [[ "${url##*/}" == *@* ]]; then  # an @REV after the last slash
        rev=${url##*@}
        url=${url%@*}
    fi
    echo "cloning $url ${rev:+at $rev}"
    git clone --quiet "$url" "$work/src" || die "cannot clone $url"
    if [[ -n "$rev" ]]; then
        git -C "$work/src" -c advice.detachedHead=false checkout --quiet "$rev" || die "$url has no revision $rev"
    fi
else
    die "$SOURCE: no such folder or file (give a detectron2 source folder, a .tar.gz of one, or a git URL)"
fi
[[ -f "$work/src/setup.py" && -f "$work/src/detectron2/__init__.py" ]] || die "$SOURCE: not a detectron2 source tree"

# --- 2. which build
build=${D2_BUILD:-}
if [[ -z "$build" ]]; then
    if [[ "${FORCE_CUDA:-0}" == 1 ]] || "$PYTHON" - <<'EOF' 2>/dev/null
import sys, torch
from torch.utils.cpp_extension import CUDA_HOME
sys.exit(0 if torch.cuda.is_available() and CUDA_HOME is not None else 1)
EOF
    then build=full; else build=python; fi
fi
[[ "$build" == full || "$build" == python ]] || die "D2_BUILD must be 'full' or 'python', got '$build'"

# --- 3. setup.py: drop the direct-URL extra (pip refuses URL requirements in a package's metadata in some
# setups, and nothing here uses panoptic evaluation) and the bundled projects a trimmed source lacks
# (PointRend, DeepLab); the pure-Python build also builds no extension.
"$PYTHON" - "$work/src/setup.py" "$build" <<'EOF' || die "$SOURCE: setup.py is not the one this script knows (detectron2 0.6)"
import re, sys
path, build = sys.argv[1], sys.argv[2]
text = open(path).read()
text = re.sub(r'^\s*"panopticapi @ [^"]*",\s*\n', "", text, flags=re.M)
n_ext = 1
if build == "python":
    text, n_ext = re.subn(r"ext_modules=get_extensions\(\),", "ext_modules=[],", text)
text, n_setup = re.subn(r"^setup\($", "PROJECTS = {k: v for k, v in PROJECTS.items() if path.isdir(v)}\n\nsetup(",
                        text, flags=re.M)
if n_ext != 1 or n_setup != 1 or "PROJECTS = {" not in text:
    sys.exit(1)
open(path, "w").write(text)
EOF

# --- 4. build requirements: detectron2.model_zoo imports pkg_resources, which setuptools 81 removed
if ! "$PYTHON" -c "import pkg_resources" 2>/dev/null; then
    echo "installing setuptools<81 (detectron2 imports pkg_resources)"
    "$PYTHON" -m pip install -q "setuptools<81"
fi

# --- 5. install: the pinned pure-Python dependencies first, then detectron2 with the environment's torch
echo "installing detectron2 from $SOURCE ($build build)"
"$PYTHON" -m pip install -q -r "$SCRIPT_DIR/requirements-detectron2.txt"
"$PYTHON" -m pip install -q --no-build-isolation "$work/src"

cd "$work"  # import the installed package, not a source tree in the working directory
"$PYTHON" - "$build" <<'EOF' || die "detectron2 installed but does not import"
import sys
import detectron2
from detectron2.modeling import build_model  # noqa: F401  (the whole model zoo registry imports)
import detectron2.model_zoo  # noqa: F401  (needs pkg_resources)
try:
    from detectron2 import _C  # noqa: F401
    ops = "with its compiled ops"
except ImportError:
    if sys.argv[1] == "full":
        sys.exit("full build requested but detectron2._C does not import")
    ops = "pure Python (no detectron2._C: no deformable conv, rotated boxes or fast COCO evaluator)"
print(f"detectron2 {detectron2.__version__} installed at {detectron2.__path__[0]}, {ops}")
EOF
