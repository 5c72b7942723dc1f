#!/usr/bin/env bash
# Pack what a toy_device_run.sh run has made into at most 7 files of at most 15 MiB in DEST (for a transfer that
# carries at most 8 files of 16 MiB): artifacts (split), the SuTI and raw apprentices in fp16 (split), results with logs.
#   benchmarks/toy_device_pack.sh RUN_DIR WORK_DIR DEST
set -u
RUN=${1:?}; WORK=${2:?}; DEST=${3:?}
PY=${PYTHON:-python3}
mkdir -p "$DEST"
rm -f "$DEST"/art.tgz.* "$DEST"/app.tgz.* "$DEST"/res.tgz
[ -d "$RUN/artifacts/base" ] && tar czf - -C "$RUN" artifacts | split -b 15m - "$DEST/art.tgz."
tar czf "$DEST/res.tgz" -C "$RUN" results logs $( [ -d "$WORK/experts" ] && echo "-C $WORK experts" ) 2>/dev/null
if [ -d "$WORK/apprentices/suti" ]; then
  rm -rf /tmp/pack_app && mkdir -p /tmp/pack_app
  for v in suti raw; do [ -d "$WORK/apprentices/$v" ] && cp -r "$WORK/apprentices/$v" /tmp/pack_app/; done
  $PY - <<'PYEOF'
import glob
from safetensors.torch import load_file, save_file
for path in glob.glob("/tmp/pack_app/*/*/*.safetensors"):  # SuTIPipeline folders: unet/, text_encoder/, demo_adapter/
    save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in load_file(path).items()}, path)
PYEOF
  tar czf - -C /tmp/pack_app . | split -b 15m - "$DEST/app.tgz."
fi
ls -la "$DEST"
